"""The memory estimator: its numbers, its search, its errors, and real out-of-memory.

The OOM tests run real train steps in child processes under an address-space limit
(RLIMIT_AS), the CPU's only hard memory boundary, and check compile mode against it.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import resource
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest


from conftest import subprocess_env
from memory_support import GiB, MiB, budget, fit_cli, oom_config, tiny, train_under_limit
from sgdlab import config as config_lib
from sgdlab import data
from sgdlab import units
from sgdlab.memory import cpu_runtime, estimator, search, trials
from sgdlab import trainer
from sgdlab.errors import ConfigError



def estimator_for(config, mesh) -> estimator.Estimator:
  return estimator.Estimator(config_lib.resolve(config, n_devices=mesh.size), mesh)


@functools.cache
def oom_estimator(model: str, mesh) -> estimator.Estimator:
  """One estimator per OOM model, shared by the tests below: it caches each k it compiled."""
  return estimator_for(oom_config(model), mesh)


# ------------------------------------------------------------------ pure parts


@pytest.mark.parametrize("text, expected", [
    ("8GiB", 8 * GiB), ("512MiB", 512 * MiB), ("16GB", 16 * 10**9), ("8G", 8 * GiB),
    (" 1.5 gib ", int(1.5 * GiB)), ("123456", 123456), (4096, 4096)])
def test_parse_bytes(text, expected):
  assert units.parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["abc", "8 parsecs", "", "-1GiB", "0", "1e9"])
def test_unparsable_budget_names_the_field(text):
  with pytest.raises(ConfigError, match="memory_budget") as e:
    units.parse_bytes(text)
  assert "8GiB" in str(e.value)  # says what is valid


def test_conv_workspace_is_the_largest_runtime_buffer():
  x = jax.ShapeDtypeStruct((8, 10, 10, 3), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, 3, 4), jnp.float32)
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  forward = jax.jit(conv).lower(x, w).compile().as_text()
  assert cpu_runtime.conv_workspace_bytes(forward) == 8 * 8 * 8 * (3 * 3 * 3) * 4
  # The gradient wrt the input is a padded conv over the 4 output channels: larger.
  grads = jax.jit(jax.grad(lambda w, x: jnp.sum(conv(x, w) ** 2), argnums=(0, 1)))
  assert cpu_runtime.conv_workspace_bytes(grads.lower(w, x).compile().as_text()) == \
      8 * 10 * 10 * (3 * 3 * 4) * 4
  # Wide (32 channels): the larger of the im2col buffer and the input padded to the
  # window's reach (CPUs differ in which they build); here the im2col buffer.
  wide = jax.ShapeDtypeStruct((8, 10, 10, 32), jnp.float32)
  same = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  wide_fwd = jax.jit(same).lower(wide, jax.ShapeDtypeStruct((3, 3, 32, 4), jnp.float32))
  assert cpu_runtime.conv_workspace_bytes(wide_fwd.compile().as_text()) == \
      max(8 * 10 * 10 * (3 * 3 * 32) * 4, 8 * 12 * 12 * 32 * 4)
  # A weight gradient alone: copies of the padded input and of the output gradient.
  g = jax.ShapeDtypeStruct((8, 10, 10, 4), jnp.float32)
  dw = jax.jit(lambda x, w, g: jax.vjp(lambda w: same(x, w), w)[1](g)[0])
  dw_text = dw.lower(wide, jax.ShapeDtypeStruct((3, 3, 32, 4), jnp.float32), g).compile()
  assert cpu_runtime.conv_workspace_bytes(dw_text.as_text()) == 8 * (12 * 12 * 32 + 10 * 10 * 4) * 4
  dense = jax.jit(lambda a: a @ a).lower(jax.ShapeDtypeStruct((64, 64), jnp.float32))
  assert cpu_runtime.conv_workspace_bytes(dense.compile().as_text()) == 0


# -------------------------------------------------------------- the estimator


def test_faster_compile_options_leave_the_analysis_unchanged(mesh1):
  est = estimator_for(tiny("cnn"), mesh1)
  program = est.program(64)
  args = (est.abstract_state, estimator.batch_struct(64, est.spec.input_shape, mesh1))
  lowered = jax.jit(program.train_step).lower(*args)
  fast = lowered.compile(compiler_options=estimator._COMPILER_OPTIONS).memory_analysis()
  default = lowered.compile().memory_analysis()
  for field in ("argument", "output", "temp", "alias"):
    name = f"{field}_size_in_bytes"
    assert getattr(fast, name) == getattr(default, name), field


def test_each_target_compiles_the_convolution_it_would_run(mesh1):
  # CPU: the kernel gradient as matmuls (what "auto" trains with here); an accelerator:
  # XLA's convolution gradient, what "auto" compiles to there.
  resolved = config_lib.resolve(tiny("cnn"), n_devices=1)
  hlo = lambda est: jax.jit(est.program(64).train_step).lower(
      est.abstract_state, estimator.batch_struct(64, est.spec.input_shape, mesh1)).as_text()
  cpu = estimator.Estimator(resolved, mesh1, target="cpu")
  accel = estimator.Estimator(resolved, mesh1, target="accelerator")
  assert cpu.config.model.conv_impl == "auto" and accel.config.model.conv_impl == "xla"
  assert hlo(accel).count("convolution(") > hlo(cpu).count("convolution(")


@pytest.mark.parametrize("n_devices", [1, 8])
def test_breakdown_adds_up_and_matches_the_shapes(n_devices, mesh1, mesh8):
  mesh = mesh1 if n_devices == 1 else mesh8
  config = tiny("cnn")
  est = estimator_for(config, mesh)
  k = 256
  lines = est.breakdown(k)
  assert sum(lines.values()) == est.total(k)
  pixels = 16 * 16
  assert lines["batch"] == k // n_devices * (pixels * 4 + 4 + 4)  # x f32, y i32, mask f32
  n_params = sum(l.params for l in estimator.layer_table(
      est.program(k).model, est.abstract_state.params, est.spec.input_shape))
  assert lines["parameters"] == 4 * n_params
  # The data line is what the trainer places on every device.
  ds = data.load(config.data)
  placed = sum(a.nbytes for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test))
  assert lines["data (every split, on every device)"] == placed
  assert lines["conv patch buffers (CPU runtime)"] > 0
  # Memory is per device: 8 devices hold an eighth of the activations each.
  if n_devices == 8:
    one = estimator_for(config, mesh1)
    assert est.train_step(k).temp < one.train_step(k).temp / 4


def test_layer_table_names_each_kind_and_its_cost(mesh1):
  est = estimator_for(_keras_cnn(), mesh1)
  layers = estimator.layer_table(est.program(32).model, est.abstract_state.params, (28, 28, 1))
  assert [l.kind for l in layers] == ["conv", "conv", "pool", "dropout", "dense", "dropout",
                                      "dense"]
  by_name = {l.name: l for l in layers}
  assert by_name["conv1"].output_shape == (24, 24, 64)
  assert by_name["conv1"].activation_bytes == 24 * 24 * 64 * 4
  assert by_name["conv0"].workspace_bytes == 26 * 26 * (9 * 1) * 4  # im2col: 1 channel
  assert by_name["conv1"].workspace_bytes == 26 * 26 * 32 * 4  # 32 channels: its input
  assert by_name["dense"].params == 12 * 12 * 64 * 128 + 128
  assert sum(l.params for l in layers) * 4 == est.param_bytes


def _keras_cnn():
  c = config_lib.default_config()
  c.model.name = "cnn"
  return c


def test_the_train_step_estimate_tracks_what_the_trainer_compiles(mesh1):
  # The trainer runs the step inside an epoch scan and evaluates in a scan: compile
  # those for real and compare with the step-based total.
  est = estimator_for(tiny("cnn"), mesh1)
  for k in (64, 512):
    ratio = est.trainer_total(k) / est.total(k)
    assert 0.95 < ratio < 1.10, (k, ratio)


# ------------------------------------------------------------------ the search


def test_search_finds_the_boundary_that_compiling_each_k_shows(mesh1):
  config = tiny("cnn", n_train=1024)
  brute = estimator_for(config, mesh1)
  # A budget whose usable part falls between k=128 and k=256.
  usable = (brute.total(128) + brute.total(256)) // 2
  # Sharing the estimator shares compiled programs, not answers: totals are per k.
  report = search.find_batch_size(config, budget(int(usable / 0.9) + 1), estimator=brute)
  assert report.largest_power_of_two == 128
  k = report.largest_k
  assert 128 <= k < 256
  # The largest k whose train step and the trainer's own programs both fit.
  need = lambda k: max(brute.total(k), brute.trainer_total(k))
  assert need(k) <= report.budget.usable < need(k + 1)
  assert report.trainer_bytes == brute.trainer_total(k)
  # Far fewer compiles than the 256 candidates: predicted jumps, certified by neighbours.
  assert report.compiles <= 12, report.compiles
  assert set(report.breakdown) >= {"parameters", "optimizer state", "batch",
                                   "activations and temporaries"}
  json.dumps(report.to_dict())  # what fit.json holds


def test_data_parallel_candidates_are_multiples_of_the_device_count(mesh8):
  report = search.find_batch_size(tiny("mlp", n_train=1000), budget(2 * GiB), mesh=mesh8)
  assert report.largest_k % 8 == 0 and report.largest_power_of_two % 8 == 0
  assert report.largest_k == 1000 // 8 * 8  # capped at the dataset, rounded to devices


def test_budget_below_the_parameters_says_nothing_fits_and_why(mesh1):
  with pytest.raises(ConfigError) as e:
    search.find_batch_size(_keras_cnn(), budget(1 * MiB), mesh=mesh1)
  text = str(e.value)
  assert e.value.field == "memory_budget" and "Nothing fits" in text
  assert "parameters (4.58 MiB)" in text and "usable" in text


def test_candidates_beyond_the_dataset_are_capped_and_said_so(mesh1):
  report = search.find_batch_size(tiny("mlp", n_train=100), budget(4 * GiB), mesh=mesh1)
  assert report.largest_k == 100 and report.largest_power_of_two == 64
  assert any("capped at the training set size (100)" in n for n in report.notes)


@pytest.mark.slow
def test_image_sizes_trade_against_batch_size(mesh1):
  sizes = [16, 32, 512]
  reports = search.tradeoff(tiny("cnn", n_train=4096), sizes, budget(700 * MiB), mesh=mesh1,
                            exact=False)
  assert [r.input_shape for r in reports[:2]] == [(16, 16, 1), (32, 32, 1)]
  assert reports[0].largest_power_of_two > reports[1].largest_power_of_two
  assert reports[1].slope_bytes_per_example > 3 * reports[0].slope_bytes_per_example
  # At 512x512 the dataset alone needs more than the budget: a row that says so.
  assert isinstance(reports[2], ConfigError) and "Nothing fits" in str(reports[2])
  table = search.tradeoff_table(sizes, reports)
  assert "nothing fits" in table.splitlines()[-1]


def test_auto_batch_size_trains_at_the_largest_k_and_logs_it(mesh1, caplog):
  config = tiny("mlp", n_train=1024)
  config.batch_size = "auto"
  config.memory_budget = "600MiB"
  expected = search.find_batch_size(config, mesh=mesh1)
  caplog.set_level("INFO")
  history = trainer.train(config, mesh=mesh1)
  assert history.config["batch_size"] == expected.chosen
  assert isinstance(history.config["batch_size"], int)
  assert "batch_size=auto: k=" in caplog.text and "breakdown at k=" in caplog.text


# ----------------------------------------------------------------- the launcher


def test_launcher_prints_a_table_and_writes_json_and_plot(tmp_path):
  out = tmp_path / "fit"
  r = fit_cli(tmp_path, "--memory_budget=1GiB", "--image_sizes=16,24", f"--workdir={out}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "largest power of two" in r.stdout and "bytes/example" in r.stdout
  result = json.loads((out / "fit.json").read_text())
  assert [tuple(r["input_shape"]) for r in result["reports"]] == [(16, 16, 1), (24, 24, 1)]
  assert [r["image_size"] for r in result["reports"]] == [16, 24]
  assert result["budget"]["bytes"] == GiB and (out / "fit.png").stat().st_size > 0


@pytest.mark.parametrize("args, expected", [
    (["--memory_budget=lots"], "memory_budget='lots' is invalid"),
    (["--memory_budget=1MiB"], "Nothing fits"),
    (["--image_sizes=16,x"], "image_sizes"),
    (["--method=trial", "--trial_steps=-1"], "trial_steps=-1 is invalid"),
    # The fixed-k planner's fields (tests/memory/test_plan.py).
    (["--config.batch_size=auto", "--config.microbatch_size=auto"],
     "config.microbatch_size='auto' is invalid"),
    (["--config.batch_size=512", "--config.microbatch_size=3"],
     "config.microbatch_size=3 is invalid: a divisor of the per-device batch 512"),
    (["--config.dtype=float16"], "config.dtype='float16' is invalid"),
    (["--config.batch_size=512", "--config.microbatch_size=auto", "--method=trial"],
     "--method=trial is invalid"),
])
def test_launcher_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, args, expected):
  out = tmp_path / "fit"
  r = fit_cli(tmp_path, *args, f"--workdir={out}")
  assert r.returncode == 2, r.stderr[-2000:]
  lines = [l for l in r.stderr.strip().splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and expected in lines[0], r.stderr[-2000:]
  assert not out.exists()


# ------------------------------------------------------------ real out-of-memory
# (budgets and the children under a limit: tests/memory_support.py)

def agreement_budgets(est: estimator.Estimator, powers, headroom=0.1):
  """For each power p, a budget where compile mode must answer p and trial mode can.

  Compile mode answers p for budgets from T(p) / (1 - headroom), T the larger of its
  train-step and trainer totals with the reserve. Trial mode answers p below the real
  need at 2p, which was never below the modeled bytes at 2p (measured: 0-160 MiB
  above). Between the two lies the budget; where that gap closes (bytes growing
  little with k) the modes can differ by one power of two, compile mode being the
  cautious one.
  """
  budgets = []
  for p in powers:
    # Compile mode also checks the trainer's programs; trial mode runs the trainer.
    need = max(est.total(p), est.trainer_total(p))
    modeled_2p = max(est.modeled(2 * p), est.without_reserve(est.trainer_total(2 * p)))
    low, high = need / (1 - headroom), modeled_2p
    assert low < high, f"no budget separates k={p} from k={2 * p} for this model"
    budgets.append(int((low + high) / 2))
  return budgets


# With the kernel gradient as a matmul (models/conv.py) a CNN's bytes at k <= 1024 are
# mostly the fixed reserve, too flat in k for a budget to separate k=1024 from 2048.
OOM_POWERS = {"mlp": [2048, 4096, 8192], "cnn": [2048, 4096, 8192]}


def check_against_real_oom(config, est, budget_bytes: int) -> tuple[int, int]:
  """Compile mode's k trains under the limit, and trial mode, doubling from there, stops
  at the same power of two: the next one runs out of memory for real.
  """
  report = search.find_batch_size(config, budget(budget_bytes), estimator=est)
  p, k = report.largest_power_of_two, report.largest_k
  chosen = trials.run_trial(config, k, budget_bytes=budget_bytes, steps=1, timeout=600)
  assert chosen.ok, f"compile mode chose k={k} (2^j: {p}) but it failed: {chosen.error}"
  assert 2 * p > est.cap or est.total(2 * p) > report.budget.usable  # predicted not to fit
  doubled = trials.run_trial(config, 2 * p, budget_bytes=budget_bytes, steps=1, timeout=600)
  assert not doubled.ok and doubled.oom, (report.table(), doubled)
  return p, k


@pytest.mark.parametrize("model,powers", [
    ("mlp", [4096]),  # the CNN's with -m slow, as batch_size="auto" under a real limit
    pytest.param("cnn", [2048], marks=pytest.mark.slow),
    pytest.param("mlp", OOM_POWERS["mlp"], marks=pytest.mark.slow),
    pytest.param("cnn", OOM_POWERS["cnn"], marks=pytest.mark.slow)])
def test_compile_mode_matches_real_out_of_memory(model, powers, mesh1):
  """One budget for the MLP in the default suite; three per model with -m slow."""
  config = oom_config(model)
  est = oom_estimator(model, mesh1)
  budgets = agreement_budgets(est, powers)
  for b in budgets:  # compile in this thread; the children then run two at a time
    search.find_batch_size(config, budget(b), estimator=est)
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    answers = list(pool.map(lambda b: check_against_real_oom(config, est, b), budgets))
  assert [p for p, _ in answers] == powers


def test_trial_mode_doubles_halves_and_caps(monkeypatch):
  # The procedure alone, with a fake child that runs out of memory above k=3000.
  fake = lambda config, k, **kw: trials.Trial(k, k <= 3000, k > 3000, 0.0)
  monkeypatch.setattr(trials, "run_trial", fake)
  config = tiny("mlp", n_train=16384)
  up = trials.trial_search(config, start=512)
  assert [t.k for t in up.trials] == [512, 1024, 2048, 4096]
  down = trials.trial_search(config, start=16384)
  assert [t.k for t in down.trials] == [16384, 8192, 4096, 2048]
  assert up.largest_power_of_two == down.largest_power_of_two == 2048
  capped = trials.trial_search(tiny("mlp", n_train=1000), start=4096)
  assert capped.trials[0].k == 512 and capped.largest_power_of_two == 512
  assert any("capped" in n for n in capped.notes)
  # A failure that is not out-of-memory stops the search instead of halving past it.
  monkeypatch.setattr(trials, "run_trial", lambda c, k, **kw: trials.Trial(k, False, False,
                                                                          0.0, "TypeError"))
  with pytest.raises(RuntimeError, match="without running out of memory"):
    trials.trial_search(config, start=512)


@pytest.mark.parametrize("text, oom", [
    ("JaxRuntimeError: RESOURCE_EXHAUSTED: Out of memory allocating 2491973632 bytes.", True),
    ("JaxRuntimeError: INTERNAL: YNNPACK operation failed: error", True),
    ("terminate called after throwing an instance of 'std::bad_alloc'", True),
    ("MemoryError: ", True), ("ValueError: bad shape", False)])
def test_allocation_failures_count_as_out_of_memory(text, oom):
  assert trials.is_oom(text) == oom


@pytest.mark.slow
def test_auto_batch_size_trains_under_the_limit_it_measured(mesh1):
  # The child measures its own budget (RLIMIT_AS minus what it maps), searches, trains.
  config = oom_config("cnn")
  b = agreement_budgets(oom_estimator("cnn", mesh1), [2048])[0]
  result = train_under_limit(config, b, batch_size="auto")
  assert 2048 <= result["config"]["batch_size"] < 4096 and result["acc"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_compile_mode_matches_the_whole_trial_procedure(model, mesh1):
  """By hand (-m slow, minutes): the manual procedure itself, from k=512, doubling until
  a real out-of-memory failure, at each budget; then the exact k and batch_size="auto".
  """
  config = oom_config(model)
  est = oom_estimator(model, mesh1)
  powers = OOM_POWERS[model]
  for p, b in zip(powers, agreement_budgets(est, powers)):
    report = search.find_batch_size(config, budget(b), estimator=est)
    manual = trials.trial_search(config, budget_bytes=b, start=512, timeout=1800)
    assert report.largest_power_of_two == manual.largest_power_of_two == p, manual.table()
    assert [t.k for t in manual.trials] == [512 << j for j in range(len(manual.trials))]
    assert trials.run_trial(config, report.largest_k, budget_bytes=b, timeout=1800).ok
    assert p <= train_under_limit(config, b, batch_size="auto")["config"]["batch_size"] < 2 * p


_PROBE = ("import jax; from sgdlab.memory import budget; from sgdlab.train import step; "
          "budget.warm_up(step.make_mesh()); print(budget.address_space_bytes())")


@pytest.mark.slow  # three fits under a real limit
def test_trial_mode_under_an_inherited_limit_agrees_with_compile_mode(tmp_path, mesh1):
  # A shared cluster's `ulimit -v` / `prlimit --as`: a trial child cannot raise its soft
  # limit above the hard one it inherits, so it must cap its limit there, not crash.
  config = oom_config("mlp")
  (tmp_path / "oom.py").write_text(
      "from sgdlab.config import from_dict\n"
      f"def get_config():\n  return from_dict({config_lib.to_dict(config)!r})\n")
  base = int(subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                            env=subprocess_env(1), check=True).stdout.split()[-1])
  limit = base + agreement_budgets(oom_estimator("mlp", mesh1), [4096])[0]
  answers = {}
  for method in ("compile", "trial"):
    r = subprocess.run(
        [sys.executable, "-m", "sgdlab.fit", f"--config={tmp_path / 'oom.py'}",
         f"--method={method}", "--trial_start=2048", "--trial_steps=1", "--exact=false",
         f"--workdir={tmp_path / method}"], capture_output=True, text=True,
        env=subprocess_env(1), timeout=900,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / method / "fit.json").read_text())
    answers[method] = (result["reports"][0]["largest_power_of_two"] if method == "compile"
                       else result["trials"][0]["largest_power_of_two"])
  assert answers["trial"] == answers["compile"] == 4096, answers
