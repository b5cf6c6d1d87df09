# Staging helpers for images built FROM scratch out of host files (sourced, not run):
# `scripts/images` (the product images) and `e2e/podman/agent-image` (the e2e test agent).
#
# A root file system is assembled in a directory: each program is copied together with
# every shared library `ldd` lists for it, each file at its canonical host path (the
# directory's symlinks resolved, the file itself dereferenced), and the host's top-level
# merged-/usr symlinks (/lib -> usr/lib, …) are recreated so the ELF interpreter path
# (/lib64/ld-linux-x86-64.so.2) and the library search path work as on the host.
# Nothing is downloaded; no package manager, no shell is added.

# stage_die MESSAGE: print and exit 1.
stage_die() {
  echo "images: error: $*" >&2
  exit 1
}

# stage_init ROOT: an empty root with the host's merged-/usr layout and a /tmp.
stage_init() {
  local root=$1 d
  mkdir -p "$root"
  for d in bin sbin lib lib64; do
    if [ -L "/$d" ]; then
      ln -sfn "$(readlink "/$d")" "$root/$d"
    elif [ -d "/$d" ]; then
      mkdir -p "$root/$d"
    fi
  done
  mkdir -p "$root/usr/bin" "$root/usr/sbin" "$root/usr/lib" "$root/etc" "$root/tmp"
  chmod 1777 "$root/tmp"
}

# stage_file ROOT SRC [DEST]: copy SRC (dereferenced) into ROOT, at DEST (an absolute path
# inside the image) or at SRC's canonical path.
stage_file() {
  local root=$1 src=$2 dest=${3:-}
  [ -e "$src" ] || stage_die "$src does not exist"
  if [ -z "$dest" ]; then
    dest="$(readlink -f "$(dirname "$src")")/$(basename "$src")"
  fi
  mkdir -p "$root$(dirname "$dest")"
  cp -L --preserve=mode "$src" "$root$dest"
}

# stage_libs_of FILE: the shared libraries (and the ELF interpreter) FILE needs, one path a
# line; nothing for a static binary; error when a library is not found.
stage_libs_of() {
  local file=$1 out
  if ! out=$(ldd "$file" 2>&1); then
    case $out in
      *"not a dynamic executable"* | *"statically linked"*) return 0 ;;
      *) stage_die "ldd $file: $out" ;;
    esac
  fi
  if grep -q "not found" <<<"$out"; then
    stage_die "ldd $file: a library is missing on this host: $(grep 'not found' <<<"$out" | tr -s ' \t' ' ')"
  fi
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out"
}

# stage_elf ROOT SRC [DEST]: stage_file plus every library SRC needs (at canonical paths).
stage_elf() {
  local root=$1 src=$2 dest=${3:-} lib
  stage_file "$root" "$src" "$dest"
  while IFS= read -r lib; do
    [ -n "$lib" ] && stage_file "$root" "$lib"
  done < <(stage_libs_of "$src")
}

# stage_link ROOT TARGET LINK: a symlink LINK (absolute path in the image) -> TARGET.
stage_link() {
  local root=$1 target=$2 link=$3
  mkdir -p "$root$(dirname "$link")"
  ln -sfn "$target" "$root$link"
}

# stage_tool NAME: absolute path of a host program (PATH plus the sbin directories).
stage_tool() {
  local name=$1 dir
  for dir in ${PATH//:/ } /usr/local/sbin /usr/sbin /sbin /usr/bin /bin; do
    if [ -x "$dir/$name" ] && [ -f "$dir/$name" ]; then
      echo "$dir/$name"
      return 0
    fi
  done
  return 1
}

# stage_users ROOT UID NAME HOME: /etc/passwd and /etc/group with root and one user.
stage_users() {
  local root=$1 uid=$2 name=$3 home=$4
  printf 'root:x:0:0:root:/root:/nonexistent\n%s:x:%s:%s:%s:%s:/nonexistent\n' \
    "$name" "$uid" "$uid" "$name" "$home" >"$root/etc/passwd"
  printf 'root:x:0:\n%s:x:%s:\n' "$name" "$uid" >"$root/etc/group"
  chmod 0644 "$root/etc/passwd" "$root/etc/group"
}
