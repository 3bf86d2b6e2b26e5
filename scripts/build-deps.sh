# Sourced by scripts/run and scripts/test: install what building the server needs when it
# is missing. RocksDB's bindgen loads libclang itself (libclang.so or libclang-N.so);
# libclang-cpp, which some machines have without it, does not do.
if ! ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* >/dev/null 2>&1 \
  && ! ldconfig -p 2>/dev/null | grep -qE 'libclang(-[0-9.]+)?\.so'; then
  echo "installing libclang-dev (needed by RocksDB's bindgen)"
  apt-get update -qq && apt-get install -y -qq libclang-dev
fi
