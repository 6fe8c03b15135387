#!/bin/sh
# PY_LOG_COMPILER: run a Python test against this build. The package comes
# from the source tree, the library from the build tree (client/.libs/ and
# the file name libtool gave it, the soname, read from the .la: nothing here
# names its number), and so do the daemon and the C examples.
#
#   python-env.sh PYTHON SCRIPT [ARGS...]   (from the top build directory)
set -eu
python=$1
shift
: "${top_srcdir:=.}"
srcdir=$(cd "$top_srcdir" && pwd)
builddir=$(pwd)
dlname=$(sed -n "s/^dlname='\(.*\)'\$/\1/p" client/libshmbroker.la)
[ -n "$dlname" ] || { echo "python-env.sh: no dlname in client/libshmbroker.la" >&2; exit 99; }
SHMBROKER_LIBRARY=$builddir/client/.libs/$dlname
PYTHONPATH=$srcdir/python${PYTHONPATH:+:$PYTHONPATH}
# No __pycache__ in the source tree (nor in distcheck's read-only one).
PYTHONDONTWRITEBYTECODE=1
SHMBROKERD=$builddir/daemon/shmbrokerd
SHMBROKER_C_EXAMPLES=$builddir/examples
SHMBROKER_PY_EXAMPLES=$srcdir/examples/python
export SHMBROKER_LIBRARY PYTHONPATH PYTHONDONTWRITEBYTECODE SHMBROKERD SHMBROKER_C_EXAMPLES SHMBROKER_PY_EXAMPLES
# A sanitizer build's library needs the ASan runtime loaded first, which an
# uninstrumented python does not do: preload it. The interpreter's own
# allocations, never freed at exit, are no leaks of ours.
asan=$(ldd "$SHMBROKER_LIBRARY" 2>/dev/null | sed -n 's/^[[:space:]]*libasan[^ ]* => \([^ ]*\) .*/\1/p')
if [ -n "$asan" ]; then
	LD_PRELOAD=$asan${LD_PRELOAD:+:$LD_PRELOAD}
	ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0
	export LD_PRELOAD ASAN_OPTIONS
fi
exec "$python" "$@"
