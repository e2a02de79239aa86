"""``python -m deployer.image build``: the local TF-Serving-compatible image, built with no registry.

Two images, both cached:

* ``deployer/debian-base:bookworm``: a Debian root filesystem made by ``debootstrap --variant=minbase``
  and ``docker import``ed; built only when missing (it needs root and a Debian mirror).
* ``deployer/model-server-compat:<version>``: the base plus a venv holding deployer's pinned runtime
  dependencies (one layer) and deployer itself (a later layer), run as a non-root user behind an
  entrypoint that mirrors ``tf_serving_entrypoint.sh``. Its build inputs are hashed into the label
  ``deployer.inputs-hash``; a tagged image that already carries the current hash is not rebuilt.

The build context is assembled here in memory (only what the Dockerfile copies), so nothing from the
working tree — .venv, exports, state directories — is ever sent to the daemon.

The functions report through an optional ``progress`` callback; only ``main()`` prints.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from deployer import __version__
from deployer.errors import DeployerError, RuntimeUnavailable
from deployer.runtime.docker import DockerRuntime, compat_image, connect

BASE_IMAGE = "deployer/debian-base:bookworm"
INPUTS_LABEL = "deployer.inputs-hash"
DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = Path("docker") / "model-server"

# Nothing in the server reads these; dropping them keeps the base small.
_TRIM_DIRS = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt",
    "var/cache/debconf",
    "var/lib/apt/lists",
    "var/log",
)
# Proxy settings are predefined build args in Docker: passing them through needs no ARG lines.
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildResult:
    tag: str
    image_id: str
    inputs_hash: str
    built: bool  # False when the tagged image already carried this inputs hash
    base_built: bool
    seconds: float
    size_bytes: int


def _noop(_: str) -> None:
    pass


def runtime_requirements(pyproject: Path) -> list[str]:
    """The pinned runtime requirements: pyproject.toml's [project].dependencies."""
    with pyproject.open("rb") as fh:
        data = tomllib.load(fh)
    deps = data.get("project", {}).get("dependencies", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise DeployerError(f"{pyproject}: [project].dependencies must be a list of strings")
    return list(deps)


def _source_files(root: Path) -> dict[str, bytes]:
    package = root / "deployer"
    files: dict[str, bytes] = {}
    for path in sorted(package.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or "__pycache__" in rel.parts or path.suffix in {".pyc", ".pyo"}:
            continue
        files[f"src/{rel.as_posix()}"] = path.read_bytes()
    files["src/pyproject.toml"] = (root / "pyproject.toml").read_bytes()
    readme = root / "README.md"
    # pyproject names README.md as the long description; setuptools refuses to build without it.
    files["src/README.md"] = readme.read_bytes() if readme.is_file() else b"deployer\n"
    return files


def build_context(root: Path = REPO_ROOT, ca_bundle: Path = HOST_CA_BUNDLE) -> tuple[bytes, str]:
    """The build context as an uncompressed tar, and the hash of its inputs.

    The hash covers every file of the context except the CA bundle: trust roots of the build host
    say nothing about what the image contains.
    """
    docker_dir = root / DOCKER_DIR
    files: dict[str, bytes] = {
        "Dockerfile": (docker_dir / "Dockerfile").read_bytes(),
        "entrypoint.sh": (docker_dir / "entrypoint.sh").read_bytes(),
        "requirements.txt": ("\n".join(runtime_requirements(root / "pyproject.toml")) + "\n").encode(),
    }
    files.update(_source_files(root))
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    try:
        files["build-ca.crt"] = ca_bundle.read_bytes()
    except OSError as exc:
        raise DeployerError(
            f"cannot read the CA bundle {ca_bundle}: {exc}",
            hint="pip inside the build needs it to reach PyPI through the TLS proxy; install ca-certificates",
        ) from None
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            # Fixed metadata: the daemon's layer cache keys on it, and mtimes change on every checkout.
            info.mtime = 0
            info.mode = 0o755 if name == "entrypoint.sh" else 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return buf.getvalue(), digest.hexdigest()


def _run_streaming(cmd: Sequence[str], progress: Progress) -> None:
    tail: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail = [*tail[-29:], line]
            progress(line)
    if proc.returncode != 0:
        raise DeployerError(f"{cmd[0]} failed with exit code {proc.returncode}", details="\n".join(tail))


def ensure_base(runtime: DockerRuntime, progress: Progress = _noop, *, mirror: str | None = None) -> bool:
    """Build the Debian base image unless it exists; return whether it was built."""
    if runtime.image_labels(BASE_IMAGE) is not None:
        return False
    if shutil.which("debootstrap") is None:
        raise RuntimeUnavailable(
            f"the base image {BASE_IMAGE} is missing and debootstrap is not installed",
            hint="run `make docker-ready` as root (scripts/ensure-docker installs it), or apt-get install debootstrap",
        )
    if os.geteuid() != 0:
        raise RuntimeUnavailable(
            f"the base image {BASE_IMAGE} is missing and building it with debootstrap needs root",
            hint="run `make image` as root once; later builds reuse the base image",
        )
    mirror = mirror or os.environ.get("DEPLOYER_DEBIAN_MIRROR", DEFAULT_MIRROR)
    workdir = Path(tempfile.mkdtemp(prefix="deployer-base-"))
    try:
        rootfs = workdir / "rootfs"
        progress(f"debootstrap {DEBIAN_SUITE} (minbase + {', '.join(BASE_PACKAGES)}) from {mirror}")
        _run_streaming(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                DEBIAN_SUITE,
                str(rootfs),
                mirror,
            ],
            progress,
        )
        for rel in _TRIM_DIRS:
            target = rootfs / rel
            if target.is_dir():
                for child in target.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        tarball = workdir / "rootfs.tar"
        progress(f"importing the root filesystem as {BASE_IMAGE}")
        _run_streaming(["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(tarball), "."], progress)
        runtime.import_rootfs(
            tarball,
            BASE_IMAGE,
            changes=[
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "ENV LANG=C.UTF-8",
                f"LABEL deployer.base=debootstrap-minbase-{DEBIAN_SUITE}",
                'CMD ["/bin/bash"]',
            ],
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return True


def build(
    runtime: DockerRuntime | None = None,
    *,
    tag: str | None = None,
    force: bool = False,
    progress: Progress = _noop,
    root: Path = REPO_ROOT,
) -> BuildResult:
    """Make ``tag`` (default: the compatible image of this version) present and current."""
    started = time.monotonic()
    runtime = runtime or connect(progress)
    tag = tag or compat_image()
    base_built = ensure_base(runtime, progress)
    base_id = runtime.image_id(BASE_IMAGE) or ""
    context, files_hash = build_context(root)
    # The base's id is an input too: a rebuilt base must not hide behind an unchanged source hash.
    inputs_hash = hashlib.sha256(f"{files_hash}\0{base_id}".encode()).hexdigest()
    current = runtime.image_labels(tag)
    if not force and current is not None and current.get(INPUTS_LABEL) == inputs_hash:
        return BuildResult(
            tag=tag,
            image_id=runtime.image_id(tag) or "",
            inputs_hash=inputs_hash,
            built=False,
            base_built=base_built,
            seconds=time.monotonic() - started,
            size_bytes=runtime.image_size(tag),
        )
    progress(f"building {tag} (inputs {inputs_hash[:12]}, context {len(context) // 1024} KiB)")
    buildargs = {"BASE_IMAGE": BASE_IMAGE}
    buildargs.update({var: os.environ[var] for var in _PROXY_VARS if os.environ.get(var)})
    image_id = runtime.build_image(
        context,
        tag,
        labels={
            INPUTS_LABEL: inputs_hash,
            "org.opencontainers.image.title": "deployer-model-server",
            "org.opencontainers.image.version": __version__,
        },
        buildargs=buildargs,
        on_output=progress,
    )
    return BuildResult(
        tag=tag,
        image_id=image_id,
        inputs_hash=inputs_hash,
        built=True,
        base_built=base_built,
        seconds=time.monotonic() - started,
        size_bytes=runtime.image_size(tag),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployer.image", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build_cmd = sub.add_parser("build", help="build the compatible image unless it is current")
    build_cmd.add_argument("--force", action="store_true", help="rebuild even when the inputs hash matches")
    build_cmd.add_argument("--tag", default=None, help=f"image tag (default: {compat_image()})")
    sub.add_parser("tag", help="print the compatible image's tag")
    args = parser.parse_args(argv)

    if args.command == "tag":
        print(compat_image())
        return 0

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        result = build(tag=args.tag, force=args.force, progress=say)
    except DeployerError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.details:
            print(exc.details, file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    verb = "built" if result.built else "up to date:"
    base = " (base image built too)" if result.base_built else ""
    print(
        f"{verb} {result.tag} {result.image_id[:19]} {result.size_bytes / 1e6:.0f} MB "
        f"in {result.seconds:.1f} s{base}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
