#!/bin/sh
# Container entrypoint (Dockerfile.cuda): make the state folders usable by the server's user, then drop root
# and run the command (default: `fal-onprem serve ...`).
#
# The user is FAL_ONPREM_UID / FAL_ONPREM_GID when set, else the owner of the first state folder when it is
# not root (a bind mount keeps its host owner, e.g. `-v $PWD/data:/data` of uid 1000), else 10001:10001.
# A root-owned folder (one that `docker run -v` created on the host) is handed to that user; a folder of
# another user is left alone, with a warning naming it and the fix when the user cannot write it.
# Started with `--user`, it runs the command as that user, after the same warnings.
#
#   FAL_ONPREM_STATE_DIRS  folders to check (default "/data /weights /cache")
#   FAL_ONPREM_ENTRYPOINT_DRY_RUN=1  print the chown / exec instead of doing them (tests)
set -eu

dirs=${FAL_ONPREM_STATE_DIRS:-/data /weights /cache}
dry=${FAL_ONPREM_ENTRYPOINT_DRY_RUN:-}
default_id=10001

act() {
  if [ "$dry" = 1 ]; then
    echo "$*"
  else
    "$@"
  fi
}

# can_write UID GID DIR: whether that user may create files in DIR
can_write() {
  if [ "$(id -u)" = "$1" ]; then
    [ -w "$3" ]
  else
    setpriv --reuid="$1" --regid="$2" --clear-groups test -w "$3"
  fi
}

warn_unwritable() {
  echo "warning: $3 is owned by uid $(stat -c %u "$3") and uid $1 cannot write it;" \
    "downloads / job data there will fail. Fix: run with -e FAL_ONPREM_UID=$(stat -c %u "$3")" \
    "or \`chown -R $1:$2\` the folder on the host." >&2
}

if [ "$(id -u)" != 0 ]; then
  uid=$(id -u)
  gid=$(id -g)
  for d in $dirs; do
    if [ -d "$d" ] && ! can_write "$uid" "$gid" "$d"; then warn_unwritable "$uid" "$gid" "$d"; fi
  done
  act exec "$@"
  exit 0
fi

first=${dirs%% *}
mkdir -p "$first"
owner=$(stat -c %u "$first")
if [ -n "${FAL_ONPREM_UID:-}" ]; then
  uid=$FAL_ONPREM_UID
  gid=${FAL_ONPREM_GID:-$uid}
elif [ "$owner" != 0 ]; then
  uid=$owner
  gid=${FAL_ONPREM_GID:-$(stat -c %g "$first")}
else
  uid=$default_id
  gid=${FAL_ONPREM_GID:-$default_id}
fi

for d in $dirs; do
  mkdir -p "$d"
  if [ "$(stat -c %u "$d")" = 0 ] && [ "$uid" != 0 ]; then
    act chown -R "$uid:$gid" "$d"
  elif [ "$(stat -c %u "$d")" != "$uid" ] && ! can_write "$uid" "$gid" "$d"; then
    warn_unwritable "$uid" "$gid" "$d"
  fi
done

act exec setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@"
