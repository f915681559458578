"""W&B run logging (rloss.engine.tracking) and the API key in netrc (rloss.engine.credentials).

The enabled runs use the real wandb package in offline mode, with every wandb
directory, HOME and NETRC under tmp_path, no API key anywhere, and WANDB_BASE_URL
and the HTTP(S) proxies pointed at a local socket that must see no connection.
What a run recorded is read back from its ``.wandb`` file: the LevelDB-style record
log (7-byte ``:W&B`` header, then 32 KiB blocks of records with a 7-byte header
``crc32c:u32 length:u16 type:u8``), each record a wandb ``Record`` protobuf. In offline
mode wandb 0.31 writes no ``config.yaml`` or ``wandb-summary.json``: that file is the record.
"""

from __future__ import annotations

import json
import netrc
import os
import socket
import stat
import struct
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from rloss.engine import credentials
from rloss.engine.credentials import cmd_wandb_login, store_wandb_key
from rloss.engine.tracking import RunLogger

import wandb  # a dependency of rloss: its absence is a failure, not a skip

CLASSES = ["background", "disc", "square"]
CONFIG = {"loss": {"type": "pce_crf", "weight": 2e-9}, "optim": {"lr": 0.007, "epochs": 3}, "run": {"name": "tiny"}}
KEY = "0123456789abcdef0123456789abcdef01234567"  # 40 hex characters, the classic format
KEY2 = "local-" + "f" * 40  # a prefixed (self-hosted style) key


# ----------------------------------------------------------------------------------------------
# Helpers: an isolated offline environment, the .wandb record reader, wandb-core children
# ----------------------------------------------------------------------------------------------


@contextmanager
def offline_env(root: Path):
    """Offline wandb with all its directories under ``root``; yields a listening socket that
    every server / proxy address points at, so any network attempt would show up there."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    address = f"http://127.0.0.1:{listener.getsockname()[1]}"
    with pytest.MonkeyPatch.context() as mp:
        for name in ("dir", "cache", "config", "data", "home", "cwd"):
            (root / name).mkdir(parents=True, exist_ok=True)
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_DIR", str(root / "dir"))
        mp.setenv("WANDB_CACHE_DIR", str(root / "cache"))
        mp.setenv("WANDB_CONFIG_DIR", str(root / "config"))
        mp.setenv("WANDB_DATA_DIR", str(root / "data"))
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("HOME", str(root / "home"))
        mp.setenv("NETRC", str(root / "home" / "no-such-netrc"))
        mp.setenv("WANDB_BASE_URL", address)
        for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
            mp.setenv(proxy, address)
        for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NO_PROXY", "no_proxy"):
            mp.delenv(name, raising=False)
        mp.chdir(root / "cwd")
        wandb.teardown()  # wandb reads its environment once per process setup: start afresh
        try:
            yield listener
        finally:
            wandb.teardown()
            listener.close()


def connections(listener: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def wandb_records(path: Path):
    """The ``Record`` protobufs of a ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # too little room for a header: the block's tail is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (2, 3):  # FIRST, MIDDLE fragments
            pending += payload
            continue
        if kind == 4:  # LAST fragment
            payload, pending = pending + payload, b""
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def history_by_step(records) -> dict[int, dict[tuple[str, ...], object]]:
    steps = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row = {tuple(item.nested_key) or (item.key,): json.loads(item.value_json) for item in record.history.item}
            steps[row[("_step",)]] = row
    return steps


def wandb_core_children() -> list[int]:
    """Processes whose parent is this one and whose command line names wandb-core."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat_fields[1]) == os.getpid() and b"wandb-core" in cmdline:
            found.append(int(entry.name))
    return found


def examples(n=2, size=12, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    predictions = rng.integers(0, len(CLASSES), (n, size, size))
    scribbles = np.full((n, size, size), 255, dtype=np.int64)
    scribbles[:, 2, 1:-1] = 1
    scribbles[:, -3, 1:-1] = 0
    ground_truth = rng.integers(0, len(CLASSES), (n, size, size))
    ground_truth[:, :, 0] = 255
    return images, predictions, scribbles, ground_truth


# ----------------------------------------------------------------------------------------------
# One real offline run, shared
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("wandb_offline")
    run_dir = root / "results" / "tiny"  # does not exist yet: create() makes it
    images, predictions, scribbles, ground_truth = examples()
    with offline_env(root) as listener:
        logger = RunLogger.create(enabled=True, project="rloss-test", mode="offline", run_name="tiny",
                                  run_dir=run_dir, config=CONFIG, class_names=CLASSES)
        assert logger.active
        for step in range(5):
            logger.log({"train/loss": 1.0 / (step + 1), "train/lr": torch.tensor(0.007 * (1 - step / 10))}, step=step)
        logger.log_images(torch.from_numpy(images), torch.from_numpy(predictions), scribbles, ground_truth, step=5)
        logger.log({"val/miou": np.float32(0.25)}, step=5)
        children_while_active = wandb_core_children()
        run_id, run_path = logger.run_id, logger.run_path
        logger.finish()
        children_after_finish = wandb_core_children()
        # a resumed training run passes the stored id: the same W&B run continues
        resumed = RunLogger.create(enabled=True, project="rloss-test", mode="offline", run_name="tiny",
                                   run_dir=run_dir, config=CONFIG, class_names=CLASSES, resume_id=run_id)
        resumed_id, resumed_path = resumed.run_id, resumed.run_path
        resumed.log({"train/loss": 0.1}, step=6)
        resumed.finish()
        network = connections(listener)
    return SimpleNamespace(root=root, run_dir=run_dir, run_id=run_id, run_path=run_path, resumed_id=resumed_id, resumed_path=resumed_path,
                           children_while_active=children_while_active, children_after_finish=children_after_finish,
                           network=network, images=images, predictions=predictions, scribbles=scribbles,
                           ground_truth=ground_truth)


def first_run_folder(run) -> Path:
    # the first attempt and the resumed one: same id; wandb adds "-1" to a name taken in the same second
    folders = sorted((run.run_dir / "wandb").glob(f"offline-run-*-{run.run_id}*"))
    assert folders == sorted([run.run_path, run.resumed_path])
    return run.run_path


def test_offline_run_writes_its_folder_under_the_run_dir(offline_run):
    folder = first_run_folder(offline_run)
    assert offline_run.run_path == folder
    assert (folder / f"run-{offline_run.run_id}.wandb").stat().st_size > 0
    # dir= wins over WANDB_DIR, and nothing lands in the working directory
    assert not any((offline_run.root / "dir").iterdir())
    assert not (offline_run.root / "cwd" / "wandb").exists()


def test_offline_run_records_the_config_and_metrics(offline_run):
    folder = first_run_folder(offline_run)
    records = list(wandb_records(folder / f"run-{offline_run.run_id}.wandb"))
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.run_id == offline_run.run_id and run.project == "rloss-test" and run.display_name == "tiny"
    assert run.telemetry.feature.offline
    config = {item.key: json.loads(item.value_json) for item in run.config.update if item.key != "_wandb"}
    assert config == CONFIG

    history = history_by_step(records)
    assert sorted(history) == [0, 1, 2, 3, 4, 5]
    for step in range(5):
        assert history[step][("train/loss",)] == pytest.approx(1.0 / (step + 1))
        assert history[step][("train/lr",)] == pytest.approx(0.007 * (1 - step / 10))  # a tensor became a number
    assert history[5][("val/miou",)] == pytest.approx(0.25)
    assert records[-1].WhichOneof("record_type") == "exit" and records[-1].exit.exit_code == 0


def test_offline_run_records_the_example_masks(offline_run):
    folder = first_run_folder(offline_run)
    records = list(wandb_records(folder / f"run-{offline_run.run_id}.wandb"))
    row = history_by_step(records)[5]
    assert row[("val/examples", "_type")] == "images/separated"
    assert row[("val/examples", "count")] == 2
    all_masks = row[("val/examples", "all_masks")]
    assert [sorted(m) for m in all_masks] == [["ground_truth", "prediction", "scribbles"]] * 2
    expected = {"prediction": offline_run.predictions, "scribbles": offline_run.scribbles,
                "ground_truth": offline_run.ground_truth}
    for i, masks in enumerate(all_masks):
        for name, meta in masks.items():
            decoded = np.asarray(Image.open(folder / "files" / meta["path"]))
            np.testing.assert_array_equal(decoded, expected[name][i])
    for i, image_file in enumerate(row[("val/examples", "filenames")]):
        np.testing.assert_array_equal(np.asarray(Image.open(folder / "files" / image_file)), offline_run.images[i])

    # the class names, and a name for 255 in each mask, are in the run's config
    meta = {}
    for record in records:
        if record.WhichOneof("record_type") == "config":
            for item in record.config.update:
                if item.key == "_wandb":
                    meta.update(json.loads(item.value_json).get("mask/class_labels", {}))
    labels = {key.rsplit("_", 1)[-1] if "ground_truth" not in key else "ground_truth": value["value"]
              for key, value in meta.items()}
    assert labels["prediction"] == {"0": "background", "1": "disc", "2": "square", "255": "unlabeled"}
    assert labels["scribbles"]["255"] == "unlabeled"
    assert labels["ground_truth"]["255"] == "ignore" and labels["ground_truth"]["2"] == "square"


def test_resume_id_continues_the_same_run(offline_run):
    assert offline_run.resumed_id == offline_run.run_id
    second = offline_run.resumed_path
    assert second != offline_run.run_path and second.name.startswith("offline-run-")
    history = history_by_step(wandb_records(second / f"run-{offline_run.run_id}.wandb"))
    assert history[6][("train/loss",)] == pytest.approx(0.1)


def test_offline_run_needs_no_key_and_no_network(offline_run):
    assert offline_run.network == 0  # WANDB_BASE_URL and all proxies pointed at the listener
    assert not (offline_run.root / "home" / "no-such-netrc").exists()  # no key was asked for or stored


def test_finish_stops_the_wandb_service(offline_run):
    assert offline_run.children_while_active, "expected wandb-core to run while the run is active"
    assert offline_run.children_after_finish == []
    assert wandb_core_children() == []


# ----------------------------------------------------------------------------------------------
# Failures never stop training: one line, then a no-op
# ----------------------------------------------------------------------------------------------


def create_enabled(run_dir: Path, **kw) -> RunLogger:
    args = dict(enabled=True, project="rloss-test", mode="offline", run_name="tiny", run_dir=run_dir,
                config=CONFIG, class_names=CLASSES)
    return RunLogger.create(**(args | kw))


def exercise(logger: RunLogger) -> None:
    images, predictions, scribbles, ground_truth = examples()
    logger.log({"train/loss": 1.0}, step=10)
    logger.log_images(images, predictions, scribbles, ground_truth, step=10)
    logger.log({"train/loss": 0.5}, step=11)
    logger.finish()
    logger.finish()


def disabled_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("W&B disabled: ")]


def test_failing_init_is_one_line_then_no_ops(tmp_path, monkeypatch, capsys):
    def boom(*args, **kwargs):
        raise RuntimeError("service failed\nto start")

    monkeypatch.setattr(wandb, "init", boom)
    logger = create_enabled(tmp_path / "run")
    assert not logger.active and logger.run_id is None
    exercise(logger)
    err = capsys.readouterr().err
    assert err.splitlines() == ["W&B disabled: RuntimeError: service failed to start; training continues without W&B logging"]


def test_failing_log_is_one_line_then_no_ops(tmp_path, monkeypatch, capsys):
    with offline_env(tmp_path):
        logger = create_enabled(tmp_path / "run")
        assert logger.active
        calls = []

        def broken_log(self, *args, **kwargs):
            calls.append(args)
            raise OSError("disk full")

        monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", broken_log)
        exercise(logger)
        assert len(calls) == 1  # after the failure nothing reaches wandb
        assert not logger.active
        assert wandb_core_children() == []  # the failed run was finished and the service stopped
    assert disabled_lines(capsys.readouterr().err) == ["W&B disabled: OSError: disk full"]


def test_missing_wandb_package_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    logger = create_enabled(tmp_path / "run")
    exercise(logger)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(("W&B disabled: ImportError", "W&B disabled: ModuleNotFoundError"))


def test_online_without_a_key_disables_instead_of_prompting(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    (tmp_path / "netrc").write_text("machine github.com login me password x\n")
    monkeypatch.setattr(wandb, "init", lambda *a, **k: pytest.fail("wandb.init must not be called"))
    logger = create_enabled(tmp_path / "run", mode="online")
    exercise(logger)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "no API key" in lines[0] and "wandb-login" in lines[0]


def test_the_key_never_appears_in_the_disabled_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", KEY)

    def boom(*args, **kwargs):
        raise ValueError(f"invalid key {KEY} for host")

    monkeypatch.setattr(wandb, "init", boom)
    create_enabled(tmp_path / "run", mode="online").finish()
    captured = capsys.readouterr()
    assert KEY not in captured.out + captured.err
    assert disabled_lines(captured.err) == ["W&B disabled: ValueError: invalid key <key> for host; training continues "
                                            "without W&B logging (wandb.mode=offline logs locally, to upload later "
                                            "with `wandb sync`)"]


# wandb 0.31's error when the server does not answer within init_timeout (seen with WANDB_BASE_URL
# pointing at an unreachable host)
INIT_TIMED_OUT = ("Timed out initializing run: POST http://127.0.0.1:9/graphql giving up after 1 attempt(s): "
                  "context deadline exceeded\nConsider increasing the init_timeout setting:\n"
                  "  wandb.init(settings=wandb.Settings(init_timeout=...))")


@pytest.mark.parametrize("env, expected", [(None, 20.0), ("45", 45.0), ("soon", 20.0), ("0", 20.0)])
def test_online_init_waits_at_most_the_stated_timeout(tmp_path, monkeypatch, env, expected):
    # wandb's own default is 90 s (+10 s): with the network down training stood still for ~100 s
    from rloss.engine import tracking

    monkeypatch.setenv("WANDB_API_KEY", KEY)
    if env is None:
        monkeypatch.delenv("WANDB_INIT_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("WANDB_INIT_TIMEOUT", env)
    seen = []

    def fake_init(**kwargs):
        seen.append(kwargs)
        return SimpleNamespace(id="abc123", dir=str(tmp_path / "run" / "wandb" / "run-x" / "files"),
                               log=lambda *a, **k: None, finish=lambda *a, **k: None)

    monkeypatch.setattr(wandb, "init", fake_init)
    monkeypatch.setattr(wandb, "teardown", lambda *a, **k: None)
    logger = create_enabled(tmp_path / "run", mode="online")
    assert logger.active and logger.run_id == "abc123"
    logger.finish()
    assert len(seen) == 1 and "settings" in seen[0], "wandb.init got no settings: it waits its default 90 s"
    assert seen[0]["settings"].init_timeout == expected
    assert tracking.INIT_TIMEOUT_S == expected or env is not None


def test_init_timeout_is_one_line_with_the_cause_then_training_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.delenv("WANDB_INIT_TIMEOUT", raising=False)
    teardowns = []

    def timed_out(**kwargs):
        raise wandb.errors.CommError(INIT_TIMED_OUT)

    monkeypatch.setattr(wandb, "init", timed_out)
    monkeypatch.setattr(wandb, "teardown", lambda *a, **k: teardowns.append(1))
    logger = create_enabled(tmp_path / "run", mode="online")
    assert not logger.active and logger.run_id is None
    exercise(logger)  # every later call is a no-op
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "W&B disabled: CommError: Timed out initializing run: POST http://127.0.0.1:9/graphql giving up after "
        "1 attempt(s): context deadline exceeded (gave up after 20 s; WANDB_INIT_TIMEOUT=<seconds> waits longer); "
        "training continues without W&B logging (wandb.mode=offline logs locally, to upload later with `wandb sync`)"
    ]
    assert teardowns  # the wandb service the failed init started is stopped


def test_disabled_logger_is_a_no_op(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # it must not even import wandb
    logger = RunLogger.create(False, "rloss-test", "offline", "tiny", tmp_path / "run", CONFIG, CLASSES)
    assert not logger.active and logger.run_id is None and logger.run_path is None
    with logger:
        exercise(logger)
    assert not (tmp_path / "run").exists()
    assert capsys.readouterr() == ("", "")


def test_bad_mode_and_bad_images_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="wandb.mode"):
        create_enabled(tmp_path / "run", mode="cloud")
    logger = RunLogger(run=SimpleNamespace(id="x", dir=str(tmp_path)), wandb_module=None, class_names=CLASSES)
    images, predictions, scribbles, _ = examples()
    with pytest.raises(ValueError, match="scribbles"):
        logger.log_images(images, predictions, scribbles[:, :5], None, step=0)
    with pytest.raises(ValueError, match="images"):
        logger.log_images(images.astype(np.float32), predictions, scribbles, None, step=0)


# ----------------------------------------------------------------------------------------------
# The API key in netrc
# ----------------------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_store_creates_a_private_netrc_that_netrc_reads(tmp_path):
    path = tmp_path / "home" / ".netrc"
    assert store_wandb_key(KEY, netrc_path=path) == path
    assert mode(path) == 0o600
    login, _, password = netrc.netrc(path).authenticators("api.wandb.ai")
    assert (login, password) == ("user", KEY)
    assert sorted(p.name for p in path.parent.iterdir()) == [".netrc"]


def test_store_keeps_other_entries_and_replaces_the_old_key(tmp_path):
    path = tmp_path / ".netrc"
    path.write_text(
        "# my machines\n"
        "machine github.com login octocat password ghp_secret\n"
        "\n"
        "machine api.wandb.ai\n  login user\n  password " + "a" * 40 + "\n"
        "machine example.org\n  login alice\n  password \"two words\"\n"
        "default login anonymous password guest\n"
    )
    path.chmod(0o644)
    store_wandb_key(KEY, netrc_path=path)
    store_wandb_key(KEY2, host="https://api.wandb.ai", netrc_path=path)  # a URL names the same machine
    text = path.read_text()
    parsed = netrc.netrc(path)
    assert parsed.authenticators("api.wandb.ai")[2] == KEY2
    assert text.count("machine api.wandb.ai") == 1 and "a" * 40 not in text and KEY not in text
    assert parsed.authenticators("github.com") == ("octocat", "", "ghp_secret")
    assert parsed.authenticators("example.org")[2] == "two words"
    assert text.startswith("# my machines\n")
    assert text.rstrip().endswith("default login anonymous password guest")  # default stays last
    assert mode(path) == 0o600
    store_wandb_key(KEY2, netrc_path=path)
    assert path.read_text() == text  # storing the same key again changes nothing (no growing blank lines)


def test_store_honours_netrc_env_and_symlinks(tmp_path, monkeypatch):
    target = tmp_path / "dotfiles" / "netrc"
    target.parent.mkdir()
    target.write_text("machine github.com login me password x\n")
    link = tmp_path / "link-netrc"
    link.symlink_to(target)
    monkeypatch.setenv("NETRC", str(link))
    assert store_wandb_key(KEY) == target
    assert link.is_symlink() and netrc.netrc(link).authenticators("api.wandb.ai")[2] == KEY
    assert netrc.netrc(target).authenticators("github.com")[2] == "x"


@pytest.mark.parametrize("bad", ["", "   ", "short", "a" * 39, "a" * 20 + " " + "b" * 20, "c" * 40 + "!", "d" * 40 + "\nmachine x"])
def test_store_rejects_bad_keys_without_echoing_them(tmp_path, bad):
    path = tmp_path / ".netrc"
    with pytest.raises(ValueError) as info:
        store_wandb_key(bad, netrc_path=path)
    if bad.strip():
        assert bad.strip() not in str(info.value)
    assert not path.exists()


def test_store_rejects_bad_hosts(tmp_path):
    with pytest.raises(ValueError, match="host"):
        store_wandb_key(KEY, host="api.wandb.ai password x", netrc_path=tmp_path / ".netrc")


def test_failed_write_leaves_the_old_netrc_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / ".netrc"
    old = "machine github.com login me password x\n"
    path.write_text(old)
    path.chmod(0o600)

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(credentials.os, "replace", failing_replace)
    with pytest.raises(OSError):
        store_wandb_key(KEY, netrc_path=path)
    assert path.read_text() == old
    assert [p.name for p in tmp_path.iterdir()] == [".netrc"]


def test_cmd_wandb_login_stores_the_key_and_never_prints_it(tmp_path, monkeypatch, capsys):
    path = tmp_path / ".netrc"
    monkeypatch.setenv("NETRC", str(path))
    prompts = []

    def fake_getpass(prompt):
        prompts.append(prompt)
        return KEY + "\n"  # pasted with a newline

    monkeypatch.setattr(credentials.getpass, "getpass", fake_getpass)
    assert cmd_wandb_login(SimpleNamespace()) == 0
    assert netrc.netrc(path).authenticators("api.wandb.ai")[2] == KEY
    assert "hidden" in prompts[0] and "wandb.ai/authorize" in prompts[0]
    out, err = capsys.readouterr()
    assert KEY not in out + err
    assert str(path) in out


def test_cmd_wandb_login_bad_key_and_no_key(tmp_path, monkeypatch, capsys):
    path = tmp_path / ".netrc"
    monkeypatch.setenv("NETRC", str(path))
    bad = "not-a-key-but-secret-anyway"
    monkeypatch.setattr(credentials.getpass, "getpass", lambda prompt: bad)
    assert cmd_wandb_login(SimpleNamespace()) == 1
    out, err = capsys.readouterr()
    assert bad not in out + err
    assert len(err.strip().splitlines()) == 1 and err.startswith("rloss wandb-login: ")
    for interruption in (KeyboardInterrupt, EOFError):
        def interrupted(prompt, exc=interruption):
            raise exc

        monkeypatch.setattr(credentials.getpass, "getpass", interrupted)
        assert cmd_wandb_login(SimpleNamespace(host=None, netrc=None)) == 130
        assert "no key entered" in capsys.readouterr().err
    assert not path.exists()


# ----------------------------------------------------------------------------------------------
# The training engine with W&B on: offline, rank 0 only, never in the way
# ----------------------------------------------------------------------------------------------


def test_training_run_logs_losses_metrics_and_examples_offline(tmp_path):
    from rloss.engine.config import load_config
    from rloss.data.synthetic import generate_synthetic
    from rloss.engine.train import train

    data = tmp_path / "data"
    generate_synthetic(data, size=40, n_train=8, n_val=4, seed=0, progress=False)
    results = tmp_path / "results"
    with offline_env(tmp_path / "wandb_env") as listener:
        cfg = load_config(None, [
            f"data.root={data}", "data.crop_size=32", "data.batch_size=4", "model.name=deeplabv3plus_tiny",
            "optim.epochs=2", "loss.type=pce_crf", "loss.kernel=exact", f"run.results_dir={results}",
            "run.name=wb", "run.eval_every_epochs=1", "run.device=cpu", "wandb.enabled=true",
            "wandb.log_every_iters=1", "wandb.num_images=2",
        ])
        final = train(cfg)
        network = connections(listener)
    assert network == 0
    ckpt = torch.load(results / "wb" / "checkpoint.pt", weights_only=True)
    folders = list((results / "wb" / "wandb").glob(f"offline-run-*-{ckpt['wandb_id']}"))
    assert len(folders) == 1, "the checkpoint names the W&B run, for a resume to continue it"
    records = list(wandb_records(folders[0] / f"run-{ckpt['wandb_id']}.wandb"))
    steps = history_by_step(records)
    assert {1, 2, 3, 4} <= set(steps)
    for step in (1, 2, 3, 4):
        assert {("train/pce",), ("train/crf",), ("train/loss",), ("train/lr",)} <= set(steps[step])
    assert steps[4][("val/miou",)] == pytest.approx(final["miou"])
    for step in (2, 4):  # an image list is logged as nested keys: ("val/examples", "count"), ...
        assert steps[step][("val/examples", "count")] == 2
    config = next(r.config for r in records if r.WhichOneof("record_type") == "config")
    logged = {item.key: json.loads(item.value_json) for item in config.update}
    assert logged["loss"]["type"] == "pce_crf" and logged["wandb"]["mode"] == "offline"

