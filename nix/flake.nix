# conduit as a flake: the package (as nix/default.nix builds it), a development shell, and
# the NixOS module (services.conduit, nix/module.nix).
#   nix build ./nix            the binary
#   nix develop ./nix          cargo, clippy, rustfmt, libclang for RocksDB's bindings
#   imports = [ conduit.nixosModules.default ];  services.conduit.enable = true;
{
  description = "conduit, a Matrix homeserver for companies that host their own chat";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAll (pkgs: rec {
        conduit = pkgs.callPackage ./default.nix { };
        default = conduit;
      });

      devShells = forAll (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.conduit ];
          packages = [ pkgs.cargo pkgs.rustc pkgs.clippy pkgs.rustfmt pkgs.rust-analyzer ];
          LIBCLANG_PATH = "${pkgs.llvmPackages.libclang.lib}/lib";
        };
      });

      nixosModules.default = { pkgs, lib, ... }: {
        imports = [ ./module.nix ];
        services.conduit.package =
          lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.conduit;
      };
    };
}
