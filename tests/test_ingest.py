"""paramkit ingest (issue 16): many models of every format into a Parquet dataset -- one row per source with the
right status and code, models and tensors rows equal to paramkit.scan of each source (statistics checked against
float64 numpy of the arrays written here), resume after a crash equal to an uninterrupted run, a killed worker
process losing and duplicating nothing, refusals, the CLI; a Dask LocalCluster of 2 worker processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

import paramkit  # noqa: E402
from paramkit.ingestion import runner  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON_DIR = os.path.dirname(os.path.dirname(paramkit.__file__))


def _save_safetensors(path, arrays):
    from safetensors.numpy import save_file
    save_file(arrays, str(path))


def _corpus(root, n_small: int = 12, seed: int = 0):
    """Sources of every kind under root, with what each must give: {source: (status, code, arrays or None)}.
    arrays: name -> float64 values of the tensors (for statistics checks)."""
    import torch
    rng = np.random.default_rng(seed)
    expect: dict[str, tuple] = {}
    root.mkdir(parents=True, exist_ok=True)
    # single safetensors files in one directory: each its own model
    flat = root / "flat"
    flat.mkdir()
    for k in range(n_small):
        arrays = {"w": rng.standard_normal((k + 2, 3)).astype(np.float32), "b": np.zeros(k + 1, np.float32)}
        _save_safetensors(flat / f"m{k:03d}.safetensors", arrays)
        expect[str(flat / f"m{k:03d}.safetensors")] = ("ok", None, arrays)
    # a sharded model directory (index) is one model
    sharded = root / "hub" / "sharded"
    sharded.mkdir(parents=True)
    a1 = {"model.layers.0.w": rng.standard_normal((4, 4)).astype(np.float32)}
    a2 = {"model.layers.1.w": rng.standard_normal((4, 4)).astype(np.float32)}
    _save_safetensors(sharded / "model-00001-of-00002.safetensors", a1)
    _save_safetensors(sharded / "model-00002-of-00002.safetensors", a2)
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "model.layers.0.w": "model-00001-of-00002.safetensors", "model.layers.1.w": "model-00002-of-00002.safetensors"}}))
    expect[str(sharded)] = ("ok", None, {**a1, **a2})
    # a torch.save checkpoint in a model directory (config.json beside it)
    tdir = root / "hub" / "torchmodel"
    tdir.mkdir()
    tw = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    torch.save({"lin.weight": tw}, str(tdir / "pytorch_model.bin"))
    (tdir / "config.json").write_text("{}")
    expect[str(tdir)] = ("ok", None, {"lin.weight": tw.numpy()})
    # numpy archives, in a directory of single files
    npd = root / "np"
    npd.mkdir()
    arr = rng.standard_normal(7).astype(np.float32)
    np.savez(npd / "a.npz", x=arr)
    expect[str(npd / "a.npz")] = ("ok", None, {"x": arr})
    # a GGUF file
    import gguf
    g = root / "g.gguf"
    gw = gguf.GGUFWriter(str(g), "llama")
    garr = rng.standard_normal((2, 8)).astype(np.float32)
    gw.add_tensor("token_embd.weight", garr)
    gw.write_header_to_file()
    gw.write_kv_data_to_file()
    gw.write_tensors_to_file()
    gw.close()
    expect[str(g)] = ("ok", None, None)
    # malformed: garbage, a truncated safetensors, a directory without weights, a missing path
    bad = root / "bad"
    bad.mkdir()
    (bad / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    expect[str(bad / "garbage.safetensors")] = ("error", "unknown_format", None)
    good = root / "tmp_good.safetensors"
    _save_safetensors(good, {"w": np.ones((64, 64), np.float32)})
    raw = good.read_bytes()
    good.unlink()
    (bad / "truncated.safetensors").write_bytes(raw[:-100])
    expect[str(bad / "truncated.safetensors")] = ("error", "data_beyond_eof", None)
    empty = root / "empty"
    empty.mkdir()
    expect[str(empty)] = ("error", "no_weights", None)
    expect[str(root / "missing.safetensors")] = ("error", "os_error", None)
    return expect


def _arguments(root):
    return [str(root / "flat"), str(root / "hub"), str(root / "np"), str(root / "g.gguf"), str(root / "bad"),
            str(root / "empty"), str(root / "missing.safetensors")]


def _read(out):
    m = pq.read_table(os.path.join(out, "models")).to_pylist()
    t = pq.read_table(os.path.join(out, "tensors")).to_pylist()
    return m, t


def _check_dataset(out, expect):
    models, tensors = _read(out)
    by_source = {}
    for r in models:
        assert r["source"] not in by_source, f"two rows for {r['source']}"
        by_source[r["source"]] = r
    assert set(by_source) == set(expect)
    for src, (status, code, arrays) in expect.items():
        r = by_source[src]
        assert r["status"] == status, (src, r["error_code"], r["error_message"])
        if status == "error":
            assert r["error_code"] == code, (src, r["error_code"], r["error_message"])
            continue
        rep = paramkit.scan(src, stats=True)
        assert r["total_params"] == rep.counting.total_params
        assert r["n_tensors"] == len(rep.tensors) and r["format"] == rep.format
        assert r["size_bytes"] == rep.counting.bytes_total
        mine = {t["name"]: t for t in tensors if t["source"] == src}
        assert set(mine) == {t.name for t in rep.tensors}
        if arrays is not None:
            for name, a in arrays.items():
                v = np.asarray(a, dtype=np.float64).reshape(-1)
                t = mine[name]
                assert t["numel"] == v.size and t["shape"] == list(np.shape(a))
                assert t["min"] == v.min() and t["max"] == v.max() and t["absmax"] == np.abs(v).max()
                assert t["zeros"] == int((v == 0).sum())
                assert t["mean"] == pytest.approx(v.mean(), rel=1e-9, abs=1e-12)
            params = sum(np.size(a) for a in arrays.values())
            assert r["total_params"] == params
    ids = {r["model_id"] for r in models}
    assert {t["model_id"] for t in tensors} <= ids
    return models, tensors


def _comparable(rows, drop=("scan_s", "worker", "attempts")):
    return sorted((json.dumps({k: v for k, v in r.items() if k not in drop}, sort_keys=True, default=str)
                   for r in rows))


def test_local_pool_one_row_per_source_equal_to_scan(tmp_path):
    expect = _corpus(tmp_path / "src")
    s = paramkit.ingest(_arguments(tmp_path / "src"), str(tmp_path / "out"), jobs=2, batch=5)
    assert (s.ok, s.errors) == (sum(e[0] == "ok" for e in expect.values()), sum(e[0] == "error" for e in expect.values()))
    assert s.errors_by_code == {"unknown_format": 1, "data_beyond_eof": 1, "no_weights": 1, "os_error": 1}
    _check_dataset(str(tmp_path / "out"), expect)
    assert len(os.listdir(tmp_path / "out" / "models")) == s.parts >= 4      # batch=5: several part files


def test_serial_and_pool_give_the_same_rows(tmp_path):
    _corpus(tmp_path / "src")
    paramkit.ingest(_arguments(tmp_path / "src"), str(tmp_path / "a"), jobs=1)
    paramkit.ingest(_arguments(tmp_path / "src"), str(tmp_path / "b"), jobs=2, batch=3)
    ma, ta = _read(str(tmp_path / "a"))
    mb, tb = _read(str(tmp_path / "b"))
    assert _comparable(ma) == _comparable(mb) and _comparable(ta) == _comparable(tb)


def test_refuses_a_non_empty_directory_and_resume_skips_unchanged(tmp_path):
    expect = _corpus(tmp_path / "src", n_small=4)
    args = _arguments(tmp_path / "src")
    out = str(tmp_path / "out")
    paramkit.ingest(args, out, jobs=1)
    with pytest.raises(FileExistsError, match="--resume"):
        paramkit.ingest(args, out, jobs=1, resume=False)
    s = paramkit.ingest(args, out, jobs=1, resume=True)
    n_err = sum(e[0] == "error" for e in expect.values())
    assert s.skipped == len(expect) - n_err and s.errors == n_err and s.ok == 0     # errors are redone
    # a changed file is scanned again; its old row is superseded, not duplicated
    changed = tmp_path / "src" / "flat" / "m000.safetensors"
    arrays = {"w": np.full((3, 3), 2.0, np.float32)}
    _save_safetensors(changed, arrays)
    expect[str(changed)] = ("ok", None, arrays)
    s = paramkit.ingest(args, out, jobs=1, resume=True)
    assert s.ok == 1 and s.skipped == len(expect) - n_err - 1
    _check_dataset(out, expect)
    s = paramkit.ingest(args, out, jobs=1, resume=False, overwrite=True)
    assert s.skipped == 0 and s.ok == len(expect) - n_err


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path):
    expect = _corpus(tmp_path / "src")
    args = _arguments(tmp_path / "src")
    whole = str(tmp_path / "whole")
    paramkit.ingest(args, whole, jobs=1, batch=4)
    crashed = str(tmp_path / "crashed")
    # a process that dies (os._exit: no cleanup, no flush) after 11 models, part files half written
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {PYTHON_DIR!r})
        import paramkit
        from paramkit.ingestion import runner
        done = [0]
        real = runner.scan_source
        def dying(src, options):
            done[0] += 1
            if done[0] > 11:
                os._exit(17)
            return real(src, options)
        runner.scan_source = dying
        paramkit.ingest({args!r}, {crashed!r}, jobs=1, batch=4)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 17, r.stderr
    part_rows = len(_read(crashed)[0])
    assert 0 < part_rows < len(expect)          # some parts landed, not all
    landed_ok = sum(m["status"] == "ok" for m in _read(crashed)[0])
    s = paramkit.ingest(args, crashed, jobs=2, resume=True)
    assert s.skipped == landed_ok > 0 and s.ok + s.errors == len(expect) - landed_ok
    mw, tw = _read(whole)
    mc, tc = _check_dataset(crashed, expect)
    assert _comparable(mc) == _comparable(mw) and _comparable(tc) == _comparable(tw)


def test_a_killed_worker_process_loses_and_duplicates_nothing(tmp_path, monkeypatch):
    expect = _corpus(tmp_path / "src", n_small=6)
    victim = str(tmp_path / "src" / "flat" / "m002.safetensors")
    real = runner.scan_source

    def killed_once(src, options):      # the worker running the victim's first try is killed (SIGKILL)
        if src == victim and options.get("attempts_before", 0) == 0:
            os.kill(os.getpid(), 9)
        return real(src, options)
    monkeypatch.setattr(runner, "scan_source", killed_once)   # fork: the pool's processes see it
    s = paramkit.ingest(_arguments(tmp_path / "src"), str(tmp_path / "out"), jobs=2, retries=1)
    models, _ = _check_dataset(str(tmp_path / "out"), expect)
    row = next(m for m in models if m["source"] == victim)
    assert row["status"] == "ok" and row["attempts"] == 2
    assert s.ok == sum(e[0] == "ok" for e in expect.values())


def test_a_worker_that_always_dies_gives_an_error_row(tmp_path, monkeypatch):
    expect = _corpus(tmp_path / "src", n_small=3)
    victim = str(tmp_path / "src" / "flat" / "m001.safetensors")
    real = runner.scan_source

    def always_killed(src, options):
        if src == victim:
            os.kill(os.getpid(), 9)
        return real(src, options)
    monkeypatch.setattr(runner, "scan_source", always_killed)
    paramkit.ingest(_arguments(tmp_path / "src"), str(tmp_path / "out"), jobs=2, retries=1)
    expect[victim] = ("error", "worker_died", None)
    models, _ = _check_dataset(str(tmp_path / "out"), expect)
    # its run in the shared pool that broke, then retries + 1 = 2 runs alone in which its worker died
    assert next(m for m in models if m["source"] == victim)["attempts"] == 3


def test_timeout_becomes_an_error_row(tmp_path, monkeypatch):
    src = tmp_path / "m.safetensors"
    _save_safetensors(src, {"w": np.ones(3, np.float32)})
    import time as _time
    real_scan = paramkit.scan

    def slow(*a, **k):
        _time.sleep(5)
        return real_scan(*a, **k)
    monkeypatch.setattr(paramkit, "scan", slow)
    s = paramkit.ingest([str(src)], str(tmp_path / "out"), jobs=1, timeout=0.3)
    models, _ = _read(str(tmp_path / "out"))
    assert s.errors_by_code == {"timeout": 1} and models[0]["error_code"] == "timeout"


def test_manifests_txt_csv_parquet(tmp_path):
    expect = _corpus(tmp_path / "src", n_small=3)
    srcs = sorted(expect)
    (tmp_path / "list.txt").write_text("# models\n" + "\n".join(srcs[:4]) + "\n\n")
    (tmp_path / "list.csv").write_text("source,other\n" + "\n".join(f"{s},x" for s in srcs[4:8]) + "\n")
    pq.write_table(pa.table({"source": srcs[8:]}), str(tmp_path / "list.parquet"))
    paramkit.ingest([str(tmp_path / "list.txt"), str(tmp_path / "list.csv"), str(tmp_path / "list.parquet")],
                    str(tmp_path / "out"), jobs=1)
    _check_dataset(str(tmp_path / "out"), expect)


def test_readable_with_pandas_and_schema_metadata(tmp_path):
    pd = pytest.importorskip("pandas")
    _corpus(tmp_path / "src", n_small=2)
    paramkit.ingest(_arguments(tmp_path / "src"), str(tmp_path / "out"), jobs=1, quant="int8_channel")
    m = pd.read_parquet(tmp_path / "out" / "models")
    t = pd.read_parquet(tmp_path / "out" / "tensors")
    assert set(m.status) == {"ok", "error"} and len(t) > 0
    schema = pq.read_schema(next((tmp_path / "out" / "models").glob("part-*.parquet")))
    assert schema.metadata[b"paramkit_ingest_schema"] == b"1"
    q = json.loads(t.loc[t.name == "w"].iloc[0]["quant"])
    assert "int8_channel" in q and q["int8_channel"]["sqnr_db"] > 20
    dd = pytest.importorskip("dask.dataframe")
    dm = dd.read_parquet(str(tmp_path / "out" / "models")).compute()
    assert sorted(dm.source) == sorted(m.source) and sorted(dm.total_params.dropna()) == sorted(m.total_params.dropna())
    duckdb = pytest.importorskip("duckdb")     # in the test extra: CI has it
    glob = str(tmp_path / "out" / "models" / "*.parquet")
    rows = duckdb.sql(f"SELECT status, count(*) FROM '{glob}' GROUP BY status ORDER BY status").fetchall()
    assert rows == [("error", int((m.status == "error").sum())), ("ok", int((m.status == "ok").sum()))]
    n = duckdb.sql(f"SELECT count(*) FROM '{str(tmp_path / 'out' / 'tensors' / '*.parquet')}'").fetchall()[0][0]
    assert n == len(t)


def test_cli_summary_exit_codes_and_refusal(tmp_path):
    _corpus(tmp_path / "src", n_small=2)
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR, COLUMNS="80")
    cmd = [sys.executable, "-m", "paramkit", "ingest", *_arguments(tmp_path / "src"), "--out", str(tmp_path / "o"),
           "--jobs", "2", "--no-stats"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 3, r.stderr              # some models are error rows
    assert "ok, 4 errors" in r.stdout and "os_error 1" in r.stdout
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "--resume" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(cmd + ["--resume", "--json"], capture_output=True, text=True, env=env)
    assert r.returncode == 3 and json.loads(r.stdout)["skipped"] > 0
    models, tensors = _read(str(tmp_path / "o"))
    assert all(t["mean"] is None for t in tensors)       # --no-stats: counts only


def test_dask_local_cluster_two_workers(tmp_path):
    distributed = pytest.importorskip("distributed")
    expect = _corpus(tmp_path / "src", n_small=200)     # 200+ sources of every kind
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        s = paramkit.ingest(_arguments(tmp_path / "src"), str(tmp_path / "out"), client=client, batch=50)
    assert s.ok + s.errors == len(expect) >= 200
    models, _ = _check_dataset(str(tmp_path / "out"), expect)
    assert len({m["worker"] for m in models if m["status"] == "ok"}) == 2      # both workers scanned


def test_readme_schema_tables_list_every_column():
    from paramkit.ingestion.schema import MODEL_COLUMNS, TENSOR_COLUMNS
    readme = open(os.path.join(os.path.dirname(HERE), "README.md"), encoding="utf-8").read()
    section = readme[readme.index("## Ingest"):readme.index("## Errors")]
    models = section[section.index("`DIR/models` columns:"):section.index("`DIR/tensors` columns:")]
    tensors = section[section.index("`DIR/tensors` columns:"):]
    for part, cols in ((models, MODEL_COLUMNS), (tensors, TENSOR_COLUMNS)):
        rows = [line for line in part.splitlines() if line.startswith("| `")]
        assert rows == [f"| `{n}` | {t} | {w} |" for n, t, w in cols]


def test_dask_worker_killed_mid_run_loses_and_duplicates_nothing(tmp_path):
    distributed = pytest.importorskip("distributed")
    import signal
    import threading
    import time
    expect = _corpus(tmp_path / "src", n_small=40)
    slow = tmp_path / "src" / "slow"       # bigger files: the run lasts long enough to kill a worker within it
    slow.mkdir()
    rng = np.random.default_rng(3)
    for k in range(24):
        arrays = {"w": rng.standard_normal((512, 1024)).astype(np.float32)}
        _save_safetensors(slow / f"s{k:02d}.safetensors", arrays)
        expect[str(slow / f"s{k:02d}.safetensors")] = ("ok", None, None)
    out = str(tmp_path / "out")
    result: list = []
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        run = threading.Thread(target=lambda: result.append(
            paramkit.ingest(_arguments(tmp_path / "src") + [str(slow)], out, client=client, batch=4)))
        run.start()
        def parts():
            d = os.path.join(out, "models")
            return [n for n in os.listdir(d) if n.startswith("part-")] if os.path.isdir(d) else []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not parts():
            time.sleep(0.02)
        assert parts() and run.is_alive()       # mid-run: some parts written, the run still going
        pids = client.run(os.getpid)
        os.kill(next(iter(pids.values())), signal.SIGKILL)     # one worker process dies mid-run
        run.join(240)
        assert not run.is_alive()
    assert result and result[0].ok + result[0].errors == len(expect)
    _check_dataset(out, expect)


def test_remote_sources_rows_equal_local_and_resume_skips_them(tmp_path, server):
    pytest.importorskip("urllib3")
    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5}
    local = tmp_path / "m.safetensors"
    _save_safetensors(local, arrays)
    url = server.add_file("models/m.safetensors", str(local))
    out = str(tmp_path / "out")
    s = paramkit.ingest([url, str(local)], out, jobs=1)
    assert s.ok == 2
    models, tensors = _read(out)
    remote, here = (next(m for m in models if m["source"] == src) for src in (url, str(local)))
    for k in ("total_params", "n_tensors", "size_bytes", "format", "agg_absmax", "agg_mean"):
        assert remote[k] == here[k], k
    ident = json.loads(remote["identity"])
    assert ident["objects"][url] == {"size": local.stat().st_size, "validator": server.etags["/models/m.safetensors"]}
    t = next(t for t in tensors if t["source"] == url)
    assert t["min"] == -5.5 and t["max"] == 5.5 and t["mean"] == 0.0
    assert json.loads(remote["transfer"])["requests"] >= 1 and here["transfer"] is None
    before = len(server.requests())
    s = paramkit.ingest([url, str(local)], out, jobs=1, resume=True)
    assert s.skipped == 2 and len(server.requests()) == before      # nothing fetched again


def test_scheduler_address_and_progress_bar(tmp_path):
    """--scheduler ADDRESS of a running cluster (here a LocalCluster started by the test), and the bar on
    stderr with --progress."""
    distributed = pytest.importorskip("distributed")
    expect = _corpus(tmp_path / "src", n_small=5)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                                  dashboard_address=None) as cluster:
        env = dict(os.environ, PYTHONPATH=PYTHON_DIR, COLUMNS="100")
        r = subprocess.run([sys.executable, "-m", "paramkit", "ingest", *_arguments(tmp_path / "src"), "--out",
                            str(tmp_path / "o"), "--scheduler", cluster.scheduler_address, "--progress"],
                           capture_output=True, text=True, env=env)
    assert r.returncode == 3, r.stderr
    assert "ingest" in r.stderr and "models/s" in r.stderr and "errors 4" in r.stderr
    _check_dataset(str(tmp_path / "o"), expect)
