# Build conduit with Nix: `nix-build nix/` (uses nixpkgs from NIX_PATH).
# RocksDB's bindings need libclang at build time.
{ pkgs ? import <nixpkgs> { } }:

pkgs.rustPlatform.buildRustPackage {
  pname = "conduit";
  version = "0.1.0";
  src = pkgs.lib.cleanSource ../.;
  cargoLock.lockFile = ../Cargo.lock;

  nativeBuildInputs = [ pkgs.rustPlatform.bindgenHook ];
  # The integration tests boot servers and a Python SDK; run them with scripts/test instead.
  doCheck = false;

  meta = {
    description = "A Matrix homeserver for companies that host their own chat";
    license = pkgs.lib.licenses.asl20;
    mainProgram = "conduit";
  };
}
