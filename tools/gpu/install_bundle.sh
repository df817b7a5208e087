#!/usr/bin/env bash
# install_bundle.sh PARTS SITE -- on the network-less GPU node: reassemble, verify and unpack the offline bundle.
#   PARTS: a folder holding SHA256SUMS, site.tar.xz.part-*, fallback/*.whl (the contents of .gpu/p1, p2, ...)
#   SITE:  where the tree goes; afterwards  export PYTHONPATH=SITE:SITE-fallback:$PYTHONPATH  (no pip index used)
# Exit 3: parts missing (send them again); 4: a checksum failed.
set -euo pipefail
PARTS=${1:?usage: install_bundle.sh PARTS SITE}
SITE=${2:?usage: install_bundle.sh PARTS SITE}
PY=${PY:-python3}
cd "$PARTS"
[ -f SHA256SUMS ] || { echo "SHA256SUMS missing: part 1 has not arrived"; exit 3; }
want=$(grep -c 'part-' SHA256SUMS); have=$(ls site.tar.xz.part-* 2>/dev/null | wc -l)
[ "$have" = "$want" ] || { echo "have $have of $want parts: send the missing ones"; exit 3; }
sha256sum -c --quiet --ignore-missing SHA256SUMS || exit 4
ls site.tar.xz.part-* | sort -t- -k2 -n | xargs cat >"$SITE.tar.xz"
[ "$(sha256sum <"$SITE.tar.xz" | cut -d' ' -f1)" = "$(grep ' site.tar.xz$' SHA256SUMS | cut -d' ' -f1)" ] \
  || { echo "site.tar.xz: checksum mismatch after reassembly"; exit 4; }
rm -rf "$SITE" && mkdir -p "$SITE"
t=$(date +%s%N)
if command -v xz >/dev/null; then xz -d -T0 -c "$SITE.tar.xz" | tar -C "$SITE" -xf -
else "$PY" -c "import lzma, sys, tarfile; tarfile.open(fileobj=lzma.open(sys.argv[1])).extractall(sys.argv[2], filter='fully_trusted')" "$SITE.tar.xz" "$SITE"
fi
echo "unpacked in $(( ($(date +%s%N) - t) / 1000000 )) ms: $(du -sh "$SITE" | cut -f1)"; rm -f "$SITE.tar.xz"
# fallback wheels: only where the image lacks the package (or, typing_extensions, has one older than zarr's 4.12)
for w in fallback/*.whl; do
  [ -f "$w" ] || continue
  mod=$(basename "$w" | cut -d- -f1); [ "$mod" = pyyaml ] && mod=yaml
  "$PY" -c "import $mod, sys, importlib.metadata as m; sys.exit('$mod' == 'typing_extensions' and tuple(map(int, m.version('typing_extensions').split('.')[:2])) < (4, 12))" 2>/dev/null \
    || { echo "fallback: $w"; "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE-fallback" "$w"; }
done
# if the image's 'nvidia' is a regular package, DALI under SITE/nvidia would be invisible: merge it in
if ! PYTHONPATH="$SITE" "$PY" -c "import nvidia.dali" 2>/dev/null; then
  nv=$("$PY" -c "import nvidia, os; print(os.path.dirname(getattr(nvidia, '__file__', None) or ''))" 2>/dev/null || true)
  if [ -n "$nv" ] && [ -d "$nv" ]; then echo "merging DALI into $nv"; cp -a "$SITE/nvidia/dali" "$SITE/nvidia/libnvcomp" "$nv"/; fi
fi
echo "export PYTHONPATH=$SITE:$SITE-fallback:\$PYTHONPATH"
