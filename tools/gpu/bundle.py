"""The offline bundle for a network-less GPU node: everything it needs beyond its own image.

    python -m tools.gpu.bundle --out .gpu [--wheels /tmp/jf-wheels] [--python python3.12] [--xz-level 6]

On a machine with package access: downloads the pinned cp312 manylinux wheels of ``tools/gpu/bundle.lock``
(zarr, numcodecs, lz4 and their deps; DALI for CUDA 13 with nvidia-libnvcomp-cu13 and DALI's pure-python
deps), checks that every Requires-Dist of every bundled wheel is met by the bundle or by the node's image
(``tools/gpu/image_packages.txt``), installs them with a CPython 3.12 into one tree (``pip install
--no-deps --target``), prunes what the node cannot use (other CPython ABIs, headers, nvCOMP's CLI), packs
it as one tar.xz and splits it into parts of at most 56 MiB with SHA256SUMS:

    OUT/p1/  part-0, SHA256SUMS, manifest.json, fallback/*.whl, install_bundle.sh
    OUT/p2/  part-1        OUT/p3/  part-2        ...

so that each part travels in one call (64 MiB limit). On the node, ``tools/gpu/install_bundle.sh PARTS
SITE`` reassembles, verifies and unpacks it; then ``PYTHONPATH=SITE`` (no pip index anywhere).

Deliberately left out: nvidia-nvimgcodec-cu13, which DALI's metadata requires. DALI loads nvImageCodec
lazily, only for its image decoders; jepa-fast decodes no images (LZ4 inflate uses nvCOMP), and import,
CPU pipelines and ``fn.decoders.inflate`` work without it. That saves ~100 MB per transfer.
"""

from __future__ import annotations

import argparse
import email
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).parent
LOCK = HERE / "bundle.lock"
IMAGE = HERE / "image_packages.txt"
MANIFEST = HERE / "bundle_manifest.json"
PART_MIB = 56
EXCLUDED = {"nvidia-nvimgcodec-cu13": "loaded lazily by DALI for image decoding only; jepa-fast decodes no images"}
TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
          "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
          "platform_machine": "x86_64", "os_name": "posix"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def read_lock(path: Path = LOCK) -> list[tuple[str, str, bool]]:
    """(name, version, fallback) of every pinned wheel."""
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fallback = line.startswith("fallback ")
        name, version = line.removeprefix("fallback ").strip().split("==")
        out.append((norm(name), version, fallback))
    return out


def read_image(path: Path = IMAGE) -> dict[str, str]:
    """The image's packages: name -> version (a '>=' entry gives its lowest version)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.replace(">=", "==").partition("==")
            out[norm(name)] = version
    return out


def wheel_metadata(whl: Path) -> dict:
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        m = email.message_from_bytes(z.read(meta))
    return {"name": norm(m["Name"]), "version": m["Version"], "requires_dist": m.get_all("Requires-Dist") or [],
            "wheel": whl.name}


def unmet_requirements(manifest: list[dict], image: dict[str, str]) -> list[str]:
    """Every Requires-Dist of the bundled wheels (for CPython 3.12 on Linux, no extras) that neither the bundle
    nor the image satisfies, apart from the ones left out on purpose (EXCLUDED)."""
    from packaging.requirements import Requirement

    have = dict(image)
    have.update({m["name"]: m["version"] for m in manifest})
    unmet = []
    for m in manifest:
        for text in m["requires_dist"]:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({**TARGET, "extra": ""}):
                continue
            name = norm(req.name)
            if name in EXCLUDED:
                continue
            version = have.get(name)
            if version is None or (req.specifier and not req.specifier.contains(version, prereleases=True)):
                unmet.append(f"{m['name']} {m['version']} requires {text!r}: "
                             f"{'not in the bundle or the image' if version is None else f'have {version}'}")
    return unmet


# ---------------------------------------------------------------------------------------------
# parts


def split_file(path: Path, out_dirs: list[Path], part_bytes: int) -> list[Path]:
    """Split ``path`` into parts of at most ``part_bytes``, part i into out_dirs[i]; returns the parts."""
    size = path.stat().st_size
    n = max(1, -(-size // part_bytes))
    if n > len(out_dirs):
        raise SystemExit(f"{path}: {size / 2**20:.1f} MiB needs {n} parts of {part_bytes / 2**20:.0f} MiB, "
                         f"only {len(out_dirs)} folders given")
    parts = []
    with open(path, "rb") as f:
        for i in range(n):
            p = out_dirs[i] / f"{path.name}.part-{i}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(f.read(part_bytes))
            parts.append(p)
    return parts


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_sums(parts: list[Path], whole: Path, dest: Path) -> None:
    lines = [f"{sha256(p)}  {p.name}" for p in parts] + [f"{sha256(whole)}  {whole.name}"]
    dest.write_text("\n".join(lines) + "\n")


def reassemble(parts_dir: Path, out: Path) -> Path:
    """Check every part against SHA256SUMS, concatenate them in order, check the whole (what the node does)."""
    sums = {}
    for line in (parts_dir / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        sums[name] = digest
    names = sorted((n for n in sums if ".part-" in n), key=lambda n: int(n.rsplit("-", 1)[1]))
    missing = [n for n in names if not (parts_dir / n).exists()]
    if missing:
        raise SystemExit(f"missing parts: {', '.join(missing)}; send them again")
    for n in names:
        if sha256(parts_dir / n) != sums[n]:
            raise SystemExit(f"{n}: checksum mismatch; send it again")
    with open(out, "wb") as f:
        for n in names:
            f.write((parts_dir / n).read_bytes())
    whole = names[0].rsplit(".part-", 1)[0]
    if sha256(out) != sums[whole]:
        raise SystemExit(f"{whole}: checksum mismatch after reassembly")
    return out


# ---------------------------------------------------------------------------------------------
# build


def download(wheels: Path, lock: list[tuple[str, str, bool]]) -> list[Path]:
    files = []
    for name, version, fallback in lock:
        d = wheels / ("fallback" if fallback else "")
        d.mkdir(parents=True, exist_ok=True)
        stem = name.replace("-", "_")
        found = [w for w in d.glob("*.whl") if norm(w.name.split("-")[0]) == name and w.name.split("-")[1] == version]
        if not found:
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                   "--python-version", "3.12", "--implementation", "cp", "-d", str(d), f"{name}=={version}"]
            for p in PLATFORMS:
                cmd += ["--platform", p]
            subprocess.run(cmd, check=True)
            found = [w for w in d.glob("*.whl") if norm(w.name.split("-")[0]) == name]
        if not found:
            raise SystemExit(f"{stem}=={version}: no wheel downloaded")
        files.append(found[0])
    return files


def build(out: Path, wheels: Path, python: str, xz_level: int) -> dict:
    lock = read_lock()
    files = download(wheels, lock)
    manifest = [wheel_metadata(w) for w in files]
    unmet = unmet_requirements(manifest, read_image())
    if unmet:
        raise SystemExit("unmet requirements:\n  " + "\n  ".join(unmet))
    main = [w for w, (_, _, fb) in zip(files, lock) if not fb]
    fallback = [w for w, (_, _, fb) in zip(files, lock) if fb]
    site = Path(tempfile.mkdtemp(prefix="jf-site-"))
    try:
        subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--target", str(site), *map(str, main)], check=True)
        dali = site / "nvidia" / "dali"
        for f in dali.glob("*cpython-3*"):
            if "cpython-312-" not in f.name:
                f.unlink()
        nvcomp = site / "nvidia" / "libnvcomp"
        for junk in (dali / "include", nvcomp / "include", nvcomp / "bin"):
            shutil.rmtree(junk, ignore_errors=True)
        for cache in site.rglob("__pycache__"):
            shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        tar = out / "site.tar.xz"
        with tarfile.open(tar, "w:xz", preset=xz_level) as t:
            t.add(site, arcname=".")
        n_dirs = -(-tar.stat().st_size // (PART_MIB * 2**20))
        parts = split_file(tar, [out / f"p{i + 1}" for i in range(n_dirs)], PART_MIB * 2**20)
        write_sums(parts, tar, out / "p1" / "SHA256SUMS")
        tar.unlink()
        (out / "p1" / "fallback").mkdir(exist_ok=True)
        for w in fallback:
            shutil.copy2(w, out / "p1" / "fallback" / w.name)
        (out / "p1" / "manifest.json").write_text(json.dumps(manifest, indent=1))
        shutil.copy2(HERE / "install_bundle.sh", out / "p1" / "install_bundle.sh")
    finally:
        shutil.rmtree(site, ignore_errors=True)
    return {"parts": [str(p) for p in parts], "mib": [round(p.stat().st_size / 2**20, 1) for p in parts],
            "wheels": len(files), "manifest": manifest}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(".gpu"), help="bundle folder (default .gpu, git-ignored)")
    ap.add_argument("--wheels", type=Path, default=Path(tempfile.gettempdir()) / "jf-wheels", help="wheel cache")
    pyenv = os.path.expanduser("~/.pyenv/versions/3.12.1/bin/python3.12")  # a pyenv shim may not run
    ap.add_argument("--python", default=os.environ.get("PY312") or (pyenv if os.path.exists(pyenv) else None)
                    or shutil.which("python3.12"),
                    help="a CPython 3.12 with pip (it only unpacks wheels)")
    ap.add_argument("--xz-level", type=int, default=6, help="xz preset: 9 is a few %% smaller and ~5x slower")
    ap.add_argument("--update-manifest", action="store_true",
                    help="also write the wheels' metadata to tools/gpu/bundle_manifest.json (the tests read it)")
    args = ap.parse_args(argv)
    r = build(args.out, args.wheels, args.python, args.xz_level)
    if args.update_manifest:
        MANIFEST.write_text(json.dumps(r["manifest"], indent=1) + "\n")
    for p, mib in zip(r["parts"], r["mib"]):
        print(f"{p}  {mib} MiB")
    print(json.dumps({"bundle": str(args.out), "parts": len(r["parts"]), "part_mib": r["mib"], "wheels": r["wheels"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
