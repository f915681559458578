"""The W&B API key in ``~/.netrc``: ``python -m rloss wandb-login``.

    store_wandb_key(key)            # validates, then writes/updates the netrc entry
    prompt_and_store_wandb_key()    # asks for the key with hidden input, then stores it

The entry is the one ``wandb`` itself reads (``machine api.wandb.ai / login user /
password <key>``); wandb finds it there, or in ``WANDB_API_KEY``, so the key is never
passed around in code, configs or logs. The file is rewritten atomically (a 0600
temporary file beside it, fsync, ``os.replace``), keeps every other machine's entry
and ends with mode 0600. The key is never printed, logged or put in an error message.
"""

from __future__ import annotations

import getpass
import netrc
import os
import re
import secrets
import shlex
import sys
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_HOST = "api.wandb.ai"
PROMPT = "W&B API key (input hidden; from https://wandb.ai/authorize): "

# Classic cloud keys are 40 hex characters; newer and self-hosted ones are longer, with a prefix.
_KEY_RE = re.compile(r"[A-Za-z0-9_-]{40,}")
_HOST_RE = re.compile(r"[A-Za-z0-9.-]+(:[0-9]+)?")


def default_netrc_path() -> Path:
    """The netrc file wandb reads: ``$NETRC`` if set, else ``~/.netrc``."""
    env = os.environ.get("NETRC")
    return Path(env).expanduser() if env else Path.home() / ".netrc"


def netrc_machine(host: str) -> str:
    """The netrc machine name for ``host``: a host name (``api.wandb.ai``) or a URL's host[:port]."""
    machine = urlsplit(host).netloc if "://" in host else host.strip().rstrip("/")
    if not _HOST_RE.fullmatch(machine):
        raise ValueError(f"W&B host {host!r} is not a host name or an http(s) URL")
    return machine


def validate_wandb_key(key: str) -> str:
    """The key with surrounding whitespace removed; a ValueError (which never echoes it) if malformed."""
    key = key.strip()
    if not key:
        raise ValueError("no W&B API key given")
    if not _KEY_RE.fullmatch(key):
        raise ValueError(
            f"that is not a W&B API key: expected 40 or more letters, digits, '_' or '-' "
            f"without spaces, got {len(key)} characters (copy it from https://wandb.ai/authorize)"
        )
    return key


def _without_machine(lines: list[str], machine: str) -> tuple[list[str], int]:
    """``lines`` without the entries for ``machine``, and the index where a new entry goes
    (before a ``default`` entry, which must stay last; else at the end)."""
    kept: list[str] = []
    insert_at = None
    in_entry = in_macro = False
    for line in lines:
        if in_macro:  # a macdef body runs to the next empty line
            in_macro = bool(line.strip())
            if not in_entry:
                kept.append(line)
            continue
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:  # unbalanced quotes: the tokens are still good enough to spot keywords
            tokens = line.split()
        if tokens and tokens[0] in ("machine", "default"):
            in_entry = tokens[:2] == ["machine", machine]
            if tokens[0] == "default" and insert_at is None:
                insert_at = len(kept)
        if tokens and tokens[0] == "macdef":
            in_macro = True
        if not in_entry:
            kept.append(line)
    return kept, len(kept) if insert_at is None else insert_at


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def store_wandb_key(key: str, host: str = DEFAULT_HOST, netrc_path: Path | None = None) -> Path:
    """Writes (or replaces) the ``machine <host>`` entry with ``key`` in the netrc file
    (``netrc_path``, else ``$NETRC``, else ``~/.netrc``); returns the path written.

    Other entries are kept as they were; an old entry for ``host`` is replaced, not
    duplicated. The update is atomic: on any failure the old file is unchanged and
    no temporary file is left. A malformed key is one ValueError that does not contain it.
    """
    key = validate_wandb_key(key)
    machine = netrc_machine(host)
    path = Path(netrc_path).expanduser() if netrc_path is not None else default_netrc_path()
    path = Path(os.path.realpath(path))  # a symlinked ~/.netrc keeps its link: update the target
    try:
        old = path.read_text()
    except FileNotFoundError:
        old = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read it ({type(exc).__name__})") from None

    lines, at = _without_machine(old.splitlines(), machine)
    before, after = lines[:at], lines[at:]
    while before and not before[-1].strip():  # one blank line around the entry, not a growing run
        before.pop()
    while after and not after[0].strip():
        after.pop(0)
    while after and not after[-1].strip():
        after.pop()
    entry = [f"machine {machine}", "  login user", f"  password {key}"]
    text = "\n".join(before + ([""] if before else []) + entry + ([""] if after else []) + after) + "\n"

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # exactly 0600 whatever the umask
            data = text.encode()
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:  # read it back as wandb will (it uses Python's netrc module)
            parsed = netrc.netrc(tmp).authenticators(machine)
        except netrc.NetrcParseError as exc:  # its message may quote a token of the file: leave it out
            raise ValueError(f"{path}: the file does not parse as netrc (line {exc.lineno}); "
                             f"fix it, or set NETRC to another file") from None
        if parsed is None or parsed[2] != key:
            raise ValueError(f"{path}: the new entry for {machine} does not read back; fix the file's layout")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def prompt_and_store_wandb_key(host: str = DEFAULT_HOST, netrc_path: Path | None = None) -> Path:
    """Asks for the key with hidden input and stores it; prints the file written, never the key."""
    key = getpass.getpass(PROMPT)
    path = store_wandb_key(key, host=host, netrc_path=netrc_path)
    print(f"W&B API key for {netrc_machine(host)} saved to {path} (mode 0600)")
    return path


def cmd_wandb_login(args) -> int:
    """``python -m rloss wandb-login``: 0 when stored; 1 on a bad key or an unwritable file
    (one line on stderr); 130 when no key was entered (Ctrl-C or end of input).

    Reads ``args.host`` and ``args.netrc`` when the parser defines them (both optional).
    """
    host = getattr(args, "host", None) or DEFAULT_HOST
    path = getattr(args, "netrc", None)
    try:
        prompt_and_store_wandb_key(host=host, netrc_path=Path(path) if path else None)
    except (KeyboardInterrupt, EOFError):
        print("\nrloss wandb-login: no key entered; nothing changed", file=sys.stderr)
        return 130
    except ValueError as exc:
        print(f"rloss wandb-login: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. a read-only home: name the file, not the key
        print(f"rloss wandb-login: cannot write {exc.filename or 'the netrc file'}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    return 0
