# NixOS module for conduit: `services.conduit`. Options follow the shape of the nixpkgs
# modules for the other Matrix homeservers (matrix-conduit, matrix-tuwunel): a freeform
# `settings` rendered to TOML and passed through CONDUIT_CONFIG, typed common keys,
# `extraEnvironment` for CONDUIT_* variables (secrets via systemd credentials or an
# EnvironmentFile belong there, not in the world-readable store), and the same hardened
# unit as docs/deploy/conduit.service.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.conduit;
  format = pkgs.formats.toml { };
  configFile = format.generate "conduit.toml" cfg.settings;
in
{
  options.services.conduit = {
    enable = lib.mkEnableOption "the conduit Matrix homeserver";

    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.callPackage ./default.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./default.nix { }";
      description = "The conduit package to run.";
    };

    extraEnvironment = lib.mkOption {
      type = lib.types.attrsOf lib.types.str;
      default = { };
      example = { CONDUIT_LOG = "info,conduit=debug"; };
      description = "Extra environment variables for the service (CONDUIT_<KEY> overrides any key).";
    };

    settings = lib.mkOption {
      default = { };
      description = ''
        conduit's configuration, rendered to conduit.toml. Every key is under `global`;
        docs/configuration.md lists them. Keys not declared here are passed through.
      '';
      type = lib.types.submodule {
        freeformType = format.type;
        options.global = {
          server_name = lib.mkOption {
            type = lib.types.str;
            example = "example.com";
            description = "The name in user IDs (@alice:<server_name>). Cannot change once the database exists.";
          };
          address = lib.mkOption {
            type = lib.types.str;
            default = "127.0.0.1";
            description = "Address to listen on; loopback for a reverse proxy on the same host.";
          };
          port = lib.mkOption {
            type = lib.types.port;
            default = 6167;
            description = "Port to listen on.";
          };
          database_path = lib.mkOption {
            type = lib.types.str;
            default = "/var/lib/conduit";
            readOnly = true;
            description = "The database directory: the unit's StateDirectory, so not settable.";
          };
          allow_registration = lib.mkOption {
            type = lib.types.bool;
            default = false;
            description = "Whether anyone may register through the API (operators use `conduit create-user`).";
          };
          log = lib.mkOption {
            type = lib.types.str;
            default = "info";
            description = "Log filter (tracing EnvFilter syntax); changes apply on `systemctl reload conduit`.";
          };
        };
      };
    };
  };

  config = lib.mkIf cfg.enable {
    users.users.conduit = {
      isSystemUser = true;
      group = "conduit";
      home = "/var/lib/conduit";
      description = "conduit Matrix homeserver";
    };
    users.groups.conduit = { };

    # The operator commands (conduit create-user, make-admin, backup) on the PATH, reading
    # the same configuration as the service; they reach the running server through its
    # control socket in /var/lib/conduit (run them as root or the conduit user).
    environment.systemPackages = [
      (pkgs.writeShellScriptBin "conduit" ''
        export CONDUIT_CONFIG=${configFile}
        exec ${lib.getExe cfg.package} "$@"
      '')
    ];

    systemd.services.conduit = {
      description = "conduit Matrix homeserver";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      environment = { CONDUIT_CONFIG = "${configFile}"; } // cfg.extraEnvironment;
      reloadTriggers = [ configFile ];
      startLimitIntervalSec = 60;
      startLimitBurst = 5;
      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = "${lib.getExe cfg.package} serve";
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        User = "conduit";
        Group = "conduit";
        StateDirectory = "conduit";
        StateDirectoryMode = "0700";
        WorkingDirectory = "/var/lib/conduit";
        UMask = "0077";
        Restart = "on-failure";
        RestartSec = 5;
        TimeoutStartSec = "5min";
        TimeoutStopSec = "2min";
        WatchdogSec = 30;
        LimitNOFILE = 65536;

        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        DevicePolicy = "closed";
        PrivateMounts = true;
        PrivateIPC = true;
        PrivateUsers = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectProc = "invisible";
        ProcSubset = "pid";
        RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        RemoveIPC = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "~@privileged @resources @obsolete @debug @mount @reboot @swap @cpu-emulation @clock @module @raw-io"
        ];
        SystemCallErrorNumber = "EPERM";
      };
    };
  };
}
