# Evaluates nix/module.nix without nixpkgs (not reachable here) against a small stand-in for
# the parts of `lib` and `pkgs` it uses, and returns the systemd unit it declares, so a test
# can compare it with docs/deploy/conduit.service. The stand-ins check nothing of option
# types; this proves the module evaluates and says the same as the shipped unit.
let
  lib = {
    mkEnableOption = description: { inherit description; };
    mkOption = option: option;
    mkDefault = value: value;
    literalExpression = text: text;
    types = {
      package = "package";
      str = "str";
      bool = "bool";
      port = "port";
      attrsOf = type: "attrsOf";
      submodule = module: module;
    };
    mkIf = condition: value: if condition then value else { };
    getExe = package: "/nix/store/conduit/bin/conduit";
  };
  pkgs = {
    formats.toml = _: {
      type = "toml";
      generate = name: value: "/nix/store/${name}";
    };
    callPackage = _: _: "conduit-package";
    writeShellScriptBin = name: text: name;
    coreutils = "/nix/store/coreutils";
  };
  module = import ../../nix/module.nix {
    inherit lib pkgs;
    config.services.conduit = {
      enable = true;
      package = "conduit-package";
      settings.global.server_name = "example.com";
      extraEnvironment = { };
    };
  };
in
{
  options = builtins.attrNames module.options.services.conduit;
  globals = builtins.attrNames module.options.services.conduit.settings.type.options.global;
  service = module.config.systemd.services.conduit;
}
