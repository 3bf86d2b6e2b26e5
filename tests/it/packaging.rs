//! The install recipes: the Debian package's metadata (cargo-deb) names files that exist and
//! agree with the unit and the config, and the Nix files parse and their NixOS module
//! declares the same hardened unit as docs/deploy/conduit.service.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use figment::providers::Format as _;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `[Service]` section of the shipped unit: each key with its values in order.
fn unit_service_section() -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(repo().join("docs/deploy/conduit.service")).unwrap();
    let mut section = String::new();
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_owned();
        } else if section == "[Service]"
            && !line.starts_with('#')
            && let Some((key, value)) = line.split_once('=')
        {
            keys.entry(key.to_owned()).or_default().push(value.to_owned());
        }
    }
    keys
}

fn tool(name: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is missing: install Debian's `{package}` (scripts/test does)"))
}

#[test]
fn the_debian_recipe_names_existing_files_that_agree_with_the_unit_and_config() {
    let manifest = repo().join("Cargo.toml");
    let deb: Value = figment::Figment::from(figment::providers::Toml::file_exact(&manifest))
        .extract_inner("package.metadata.deb")
        .expect("Cargo.toml has [package.metadata.deb]");
    let assets: Vec<(String, String, String)> = serde_json::from_value(deb["assets"].clone()).unwrap();
    let mut targets = Vec::new();
    for (source, target, mode) in &assets {
        if source == "target/release/conduit" {
            // cargo-deb builds it (and finds it in CARGO_TARGET_DIR).
            assert_eq!((target.as_str(), mode.as_str()), ("usr/bin/", "755"));
        } else {
            assert!(repo().join(source).is_file(), "asset {source} does not exist");
        }
        targets.push(if target.ends_with('/') { format!("/{target}conduit") } else { format!("/{target}") });
    }
    for needed in [
        "/usr/bin/conduit",
        "/lib/systemd/system/conduit.service",
        "/lib/systemd/system/conduit.socket",
        "/etc/conduit/conduit.toml",
    ] {
        assert!(targets.iter().any(|t| t == needed), "the package does not install {needed}: {targets:?}");
    }
    let conf_files: Vec<String> = serde_json::from_value(deb["conf-files"].clone()).unwrap();
    for conf in &conf_files {
        assert!(targets.contains(conf), "conf-file {conf} is not installed");
    }

    // The maintainer scripts are valid shell, and create the user and directories the unit
    // runs with.
    let scripts = repo().join(deb["maintainer-scripts"].as_str().unwrap());
    for script in ["postinst", "prerm", "postrm"] {
        let path = scripts.join(script);
        let status = Command::new("sh").arg("-n").arg(&path).status().unwrap();
        assert!(status.success(), "{script} is not valid shell");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o111, 0o111, "{script} is executable");
    }
    let postinst = std::fs::read_to_string(scripts.join("postinst")).unwrap();
    let postrm = std::fs::read_to_string(scripts.join("postrm")).unwrap();
    let unit = unit_service_section();
    assert_eq!(unit["User"], ["conduit"]);
    assert_eq!(unit["Group"], ["conduit"]);
    assert!(postinst.contains("adduser --system") && postinst.contains(" conduit\n"), "{postinst}");
    assert!(postinst.contains("/var/lib/conduit") && postinst.contains("chmod 0700"), "{postinst}");
    assert!(postrm.contains("\"$1\" = \"purge\"") && postrm.contains("rm -rf /var/lib/conduit"), "{postrm}");
    assert_eq!(unit["Environment"], ["CONDUIT_CONFIG=/etc/conduit/conduit.toml"]);
    assert_eq!(unit["StateDirectory"], ["conduit"]);

    // The packaged config loads without unknown keys and keeps the database in the unit's
    // state directory, by an absolute path (operator commands run from anywhere).
    // Read as the file alone: the test runner's own CONDUIT_* variables are not the package's.
    let packaged = std::fs::read_to_string(repo().join("docs/deploy/debian/conduit.toml")).unwrap();
    let loaded = conduit::config::Config::from_toml_str(&packaged).unwrap();
    assert!(loaded.unknown_keys.is_empty(), "{:?}", loaded.unknown_keys);
    assert_eq!(loaded.config.database_path, Path::new("/var/lib/conduit"));
}

#[test]
fn the_nix_files_parse_and_the_module_declares_the_shipped_unit() {
    let nix = tool("nix-instantiate", "nix-bin");
    for file in ["nix/default.nix", "nix/flake.nix", "nix/module.nix"] {
        let out = Command::new(&nix).arg("--parse").arg(repo().join(file)).output().unwrap();
        assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
    }

    // nixpkgs is not reachable here: tests/nix/module-service.nix evaluates the module with
    // stand-ins for the few `lib` and `pkgs` functions it calls.
    let out = Command::new(&nix)
        .args(["--eval", "--strict", "--json"])
        .arg(repo().join("tests/nix/module-service.nix"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let evaluated: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        evaluated["options"],
        serde_json::json!(["enable", "extraEnvironment", "package", "settings"])
    );
    for key in ["server_name", "address", "port", "database_path"] {
        assert!(evaluated["globals"].as_array().unwrap().iter().any(|k| k == key), "settings.global.{key}");
    }
    let service = &evaluated["service"];
    assert_eq!(service["environment"]["CONDUIT_CONFIG"], "/nix/store/conduit.toml");

    // Every directive of the shipped unit's [Service] is in the module with the same value,
    // and the module adds none, except the paths that differ on NixOS.
    let differ_on_nixos = ["ExecStart", "ExecReload", "Environment", "ReadWritePaths"];
    let unit = unit_service_section();
    let module = service["serviceConfig"].as_object().unwrap();
    for (key, values) in &unit {
        if differ_on_nixos.contains(&key.as_str()) {
            continue;
        }
        let in_module = module.get(key).unwrap_or_else(|| panic!("the module lacks {key}"));
        let rendered: Vec<String> = match in_module {
            Value::Bool(b) => vec![if *b { "yes" } else { "no" }.to_owned()],
            Value::Number(n) => vec![n.to_string()],
            Value::String(s) => vec![s.clone()],
            // Each list item is one line of the unit, except address families (one line).
            Value::Array(items) if key == "RestrictAddressFamilies" => {
                vec![items.iter().map(|i| i.as_str().unwrap()).collect::<Vec<_>>().join(" ")]
            }
            Value::Array(items) => items.iter().map(|i| i.as_str().unwrap().to_owned()).collect(),
            other => panic!("{key}: {other}"),
        };
        assert_eq!(&rendered, values, "{key} differs between the unit and the NixOS module");
    }
    for key in module.keys() {
        assert!(
            unit.contains_key(key) || differ_on_nixos.contains(&key.as_str()),
            "the module sets {key}, the unit does not"
        );
    }
}
