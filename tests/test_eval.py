"""`opdctl eval`: grading, metrics, benchmark files, evaluation of tiny models, resume, in-training evaluation."""

from __future__ import annotations

import json
import shutil
import time
from fractions import Fraction
from math import comb
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from opdctl.data.benchmarks import MATH_TEMPLATE, Fields, load_benchmarks
from opdctl.data.demo_task import held_out
from opdctl.data.grading import Grader, grade_response, last_boxed
from opdctl.errors import DataError
from opdctl.evaluation import session
from opdctl.evaluation.metrics import majority_correct, pass_at_k, score

from .conftest import read_metrics, run_cli, tiny_config, write_config

AIME24 = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "aime24.jsonl"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def demo_file(path: Path, count: int = 6) -> Path:
    """Demo-task problems as a benchmark file (answers like the demo's \\boxed{N})."""
    rows = [{"id": f"p{i}", "problem": p.prompt, "answer": p.answer} for i, p in enumerate(held_out(count))]
    return write_jsonl(path, rows)


def responses(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "responses.jsonl").read_text().splitlines()]


def sorted_responses(output: Path) -> list[dict]:
    return sorted(responses(output), key=lambda r: (r["benchmark"], r["problem_id"], r["sample"]))


# grading ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gold", "response"),
    [
        ("0.5", "so the probability is \\boxed{\\frac{1}{2}}."),
        ("\\frac{1}{2}", "\\boxed{0.5}"),
        ("1/2", "\\boxed{\\dfrac{1}{2}}"),
        ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\dfrac{\\sqrt{3}}{2}}"),  # nested braces inside \boxed
        ("204", "The walk takes \\boxed{204 \\text{ minutes}}"),  # units
        ("90^\\circ", "\\boxed{90}"),
        ("025", "\\boxed{25}"),  # AIME answers with leading zeros
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\pi/2)}"),
        (  # a set of answers, in another order
            "\\frac{-1+\\sqrt{17}}{2}, \\frac{-1-\\sqrt{17}}{2}",
            "\\boxed{\\frac{-1-\\sqrt{17}}{2}, \\frac{-1+\\sqrt{17}}{2}}",
        ),
        ("3\\sqrt{13}", "\\boxed{\\sqrt{117}}"),
        ("7", "first \\boxed{3}, then on reflection \\boxed{7}"),  # the last \boxed counts
        ("so $x = 12$, hence \\boxed{12}.", "\\boxed{12}"),  # a worked solution as the reference
    ],
)
def test_equivalent_answers_are_correct(gold, response):
    grade = grade_response(gold, response)
    assert grade.correct, grade
    assert grade.extracted == last_boxed(response)


@pytest.mark.parametrize(
    ("gold", "response"),
    [
        ("204", "\\boxed{205}"),
        ("\\frac{1}{2}", "\\boxed{\\frac{1}{3}}"),
        ("7", "first \\boxed{7}, then \\boxed{3}"),  # only the last \boxed counts
        ("12", "the answer is 12"),  # no \boxed: no answer
        ("12", "\\boxed{}"),
        ("12", "\\boxed{12"),  # never closed
    ],
)
def test_wrong_or_missing_answers_are_wrong(gold, response):
    assert not grade_response(gold, response).correct


def test_a_response_without_boxed_has_no_answer():
    grade = grade_response("12", "I think it is 12.")
    assert grade.extracted is None and grade.key is None


def test_last_boxed_keeps_nested_braces():
    assert last_boxed("x \\boxed{1} y \\boxed{\\frac{a^{2}}{\\sqrt{b}}} z") == "\\frac{a^{2}}{\\sqrt{b}}"
    assert last_boxed("\\fbox{4}") == "4"
    assert last_boxed("nothing here") is None


def test_a_pathological_answer_times_out_and_grading_goes_on():
    """9^9^9^9 makes sympy compute forever; the grade is cut at the timeout, counted wrong, and the grader recovers."""
    items = [("5", "\\boxed{9^{9^{9^{9}}}}"), ("0.5", "\\boxed{\\frac12}"), ("3", "\\boxed{3}")]
    started = time.monotonic()
    with Grader(workers=2, timeout=1.5) as grader:
        slow, half, three = grader.grade(items)
        again = grader.grade(items[1:])
    assert time.monotonic() - started < 30
    assert not slow.correct and slow.error and "timed out" in slow.error and slow.extracted == "9^{9^{9^{9}}}"
    assert half.correct and three.correct and half.error is None
    assert [g.correct for g in again] == [True, True]


# metrics ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_pass_at_k_equals_its_closed_form(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            exact = 1 - Fraction(comb(n - c, k), comb(n, k))
            assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_many_samples():
    assert pass_at_k(1024, 1, 1) == pytest.approx(1 / 1024)
    assert pass_at_k(1024, 0, 512) == 0.0
    assert pass_at_k(1024, 600, 512) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_majority_vote_merges_equivalent_correct_answers():
    # two correct answers written differently outvote two identical wrong ones
    assert majority_correct([("1/2", True), ("3", False), ("1/2", True), ("3", False), ("1/2", True)])
    assert not majority_correct([("3", False), ("3", False), ("1/2", True)])
    assert not majority_correct([("3", False), ("1/2", True)])  # a tie goes to the answer seen first
    assert majority_correct([("1/2", True), ("3", False)])
    assert not majority_correct([(None, False), (None, False)])  # no answers, no vote
    assert majority_correct([(None, False), (None, False), ("1/2", True)])


def test_score_of_graded_rows():
    def row(problem, correct, reason="eos", length=10, extracted="x"):
        key = "gold" if correct else extracted
        return {"problem_id": problem, "correct": correct, "key": key, "extracted": extracted, "length": length,
                "finish_reason": reason}  # fmt: skip

    rows = [row("a", True), row("a", False), row("a", True), row("a", False, "length", 30, None)]
    rows += [row("b", False), row("b", False, extracted="y"), row("b", False), row("b", True)]
    result = score("mini", rows, [1, 2, 4])
    assert result.problems == 2 and result.samples == 8
    assert result.accuracy == pytest.approx(3 / 8)
    assert result.pass_at[1] == pytest.approx(3 / 8)
    assert result.pass_at[2] == pytest.approx((pass_at_k(4, 2, 2) + pass_at_k(4, 1, 2)) / 2)
    assert result.pass_at[4] == 1.0
    assert result.majority == 0.5  # a: right 2 to 1 (no answer does not vote); b: "x" wins 2 to 1
    assert result.truncated == pytest.approx(1 / 8)
    assert result.mean_length == pytest.approx((7 * 10 + 30) / 8)
    assert result.no_answer == pytest.approx(1 / 8)


# benchmark files ---------------------------------------------------------------


def test_files_in_every_format_with_usual_or_named_columns(tmp_path):
    rows = [{"question": "1+1?", "Answer": 2, "uid": "q1"}, {"question": "2+2?", "Answer": 4.0, "uid": "q2"}]
    jsonl = write_jsonl(tmp_path / "a.jsonl", rows)
    as_json = tmp_path / "b.json"
    as_json.write_text(json.dumps(rows))
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    for path in (jsonl, as_json, parquet):
        (bench,) = load_benchmarks([], [path], Fields(id="uid"))
        assert bench.name == path.stem and bench.source == str(path)
        assert [(p.id, p.problem, p.answer) for p in bench.problems] == [("q1", "1+1?", "2"), ("q2", "2+2?", "4")]
        assert bench.prompt(bench.problems[0]) == MATH_TEMPLATE.format(problem="1+1?")
    (named,) = load_benchmarks([], [jsonl], Fields(problem="uid", answer="question"))
    assert named.problems[0].problem == "q1" and named.problems[0].id == "a-0"
    other = write_jsonl(tmp_path / "other.jsonl", [{"prompt": "x?", "solution": "so \\boxed{5}", "final_answer": [5]}])
    (unseen,) = load_benchmarks([], [other])
    assert (unseen.problems[0].problem, unseen.problems[0].answer) == ("x?", "5")
    repeated = write_jsonl(tmp_path / "repeated.jsonl", [{"problem": "x", "answer": "1", "id": "AMC"}] * 2)
    assert [p.id for p in load_benchmarks([], [repeated])[0].problems] == ["repeated-0", "repeated-1"]


def test_data_files_pair_with_benchmark_names(tmp_path):
    a = demo_file(tmp_path / "x.jsonl", 3)
    b = demo_file(tmp_path / "y.jsonl", 4)
    assert [(x.name, len(x.problems)) for x in load_benchmarks(["aime"], [a])] == [("aime", 3)]
    assert [(x.name, len(x.problems)) for x in load_benchmarks(["aime"], [a, b])] == [("aime24", 3), ("aime25", 4)]
    both = load_benchmarks(["amc23", "synthetic"], [b], limit=2)
    assert [(x.name, len(x.problems), x.prompt_template) for x in both] == [
        ("amc23", 2, MATH_TEMPLATE),
        ("synthetic", 2, "{problem}"),
    ]
    folder = tmp_path / "folder"
    folder.mkdir()
    demo_file(folder / "aime24.jsonl", 2)
    demo_file(folder / "aime25.jsonl", 5)
    assert [(x.name, len(x.problems)) for x in load_benchmarks(["aime"], [folder])] == [("aime24", 2), ("aime25", 5)]
    assert [x.name for x in load_benchmarks([str(a), "synthetic"])] == ["x", "synthetic"]


@pytest.mark.parametrize(
    ("names", "content", "fields", "fragments"),
    [
        (["nope"], None, Fields(), ["unknown benchmark 'nope'", "aime24", ".jsonl"]),
        (["aime"], "missing", Fields(), ["data file not found", ".jsonl"]),
        (["aime24"], "broken", Fields(), ["bench.jsonl line 2 is not JSON", "fix or remove that line"]),
        (["aime24"], [{"text": "q", "answer": "1"}], Fields(), ["no problem column", "problem, question", "text"]),
        (["aime24"], [{"problem": "q", "sol": "1"}], Fields(), ["no answer column", "answer", "--answer-field"]),
        (["aime24"], [{"q": "x", "a": "1"}], Fields(problem="q", answer="b"), ["no answer column 'b'", "q, a"]),
        (["aime24"], [{"problem": "q", "answer": None}], Fields(), ["row 1", "non-empty 'problem'", "'answer'"]),
        (["aime24"], [{"problem": "q", "answer": "1", "n": 1}] * 2, Fields(id="n"), ["'n' repeats ids", "--id-field"]),
        (["aime24", "aime"], [{"problem": "q", "answer": "1"}], Fields(), ["file(s) for 3 benchmark(s)"]),
    ],
)
def test_bad_benchmark_input_is_one_clear_error(tmp_path, names, content, fields, fragments):
    data = []
    if content is not None:
        path = tmp_path / "bench.jsonl"
        if content == "broken":
            path.write_text('{"problem": "1+1", "answer": "2"}\n{"problem": "2+2", answer: 4}\n')
        elif content != "missing":
            write_jsonl(path, content)
        data = [path]
    with pytest.raises(DataError) as caught:
        load_benchmarks(names, data, fields)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("template", ["no placeholder", "{problem} {other}", "{problem} \\boxed{}"])
def test_bad_prompt_templates_are_refused(template):
    with pytest.raises(DataError, match="prompt template"):
        load_benchmarks(["synthetic"], template=template)


# evaluating models -------------------------------------------------------------


@pytest.mark.slow
def test_eval_of_a_tiny_model_on_a_file(tiny_models, tmp_path):
    data = demo_file(tmp_path / "mini.jsonl", 4)
    out = tmp_path / "out"
    result = run_cli(
        "eval", "--data", data, "--model", tiny_models["teacher"], "-n", 3, "--max-new-tokens", 12, "--pass-k", "1,3",
        "-o", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = responses(out)
    assert sorted((r["problem_id"], r["sample"]) for r in rows) == [(f"p{i}", s) for i in range(4) for s in range(3)]
    for row in rows:
        assert row["benchmark"] == "mini" and row["finish_reason"] in ("eos", "length") and 0 < row["length"] <= 12
        assert row["correct"] == grade_response(row["answer"], row["response"]).correct
    summary = json.loads((out / "summary.json").read_text())
    mini = summary["benchmarks"]["mini"]
    assert mini["problems"] == 4 and mini["samples"] == 12
    assert mini["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / 12)
    assert mini["truncated"] == pytest.approx(sum(r["finish_reason"] == "length" for r in rows) / 12)
    assert {"pass@1", "pass@3", "maj@3"} <= set(mini) and summary["overall"]["accuracy"] == mini["accuracy"]
    assert "avg@3" in result.output and "pass@3" in result.output and "maj@3" in result.output
    unanswered = sum(r["extracted"] is None for r in rows) / 12
    assert mini["no_answer"] == pytest.approx(unanswered) and "no answer" in result.output
    said = "".join(result.output.split())  # the console folds long lines
    warned = "ofmini'sresponseshaveno\\boxed{}answer" in said
    assert warned == (unanswered >= 0.5)
    assert not warned or f"seetheresponsesin{out}/responses.jsonl" in said


@pytest.mark.slow
@pytest.mark.skipif(not AIME24.is_file(), reason=f"{AIME24} is not there")
def test_eval_on_aime24_counts_problems_beyond_the_context_as_wrong(tiny_models, tmp_path):
    out = tmp_path / "out"
    result = run_cli(
        "eval", "--bench", "aime24", "--data", AIME24, "--model", tiny_models["student"], "-n", 2,
        "--max-new-tokens", 16, "-o", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = responses(out)
    assert len(rows) == 60 and {r["problem_id"] for r in rows} == {f"aime24-{i}" for i in range(30)}
    over = [r for r in rows if r["finish_reason"] == "context"]  # the tiny model's context is 256 tokens
    assert over and all(r["response"] == "" and not r["correct"] for r in over)
    assert all(r["length"] <= 16 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sources"]["aime24"] == str(AIME24)
    assert summary["benchmarks"]["aime24"]["over_context"] == pytest.approx(len(over) / 60)
    assert f"{len(over) // 2} of 30 problems do not fit the model's context" in " ".join(result.output.split())


@pytest.mark.slow
def test_eval_of_a_run_checkpoint_matches_the_in_training_evaluation(tiny_models, tmp_path):
    run = tmp_path / "run"
    bench = {"bench": ["synthetic"], "max_problems": 6, "max_new_tokens": 20}
    config = tiny_config(tiny_models, run, eval=bench, output={"save_every": 2, "keep_checkpoints": None})
    assert run_cli("train", "-c", write_config(tmp_path / "c.yaml", config)).exit_code == 0
    after = next(r for r in read_metrics(run) if r.get("when") == "after")
    greedy = ["--bench", "synthetic", "-n", 1, "--temperature", 0, "--max-new-tokens", 20, "--max-problems", 6]
    result = run_cli("eval", "--model", run, *greedy, "-o", tmp_path / "latest")
    assert result.exit_code == 0, result.output
    latest = json.loads((tmp_path / "latest" / "summary.json").read_text())
    assert latest["model"] == str(run / "checkpoints" / "step_000004")
    for key in ("accuracy", "mean_length", "truncated"):  # same weights, same greedy answers
        assert latest["benchmarks"]["synthetic"][key] == pytest.approx(after[key])
    assert run_cli("eval", "--model", run, "--checkpoint", 2, *greedy, "-o", tmp_path / "two").exit_code == 0
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["model"] == str(run / "checkpoints" / "step_000002")
    missing = run_cli("eval", "--model", run, "--checkpoint", 3, *greedy)
    assert missing.exit_code == 1 and "no checkpoint at step 3: its checkpoints are at steps 2, 4" in missing.output


@pytest.mark.slow
def test_an_interrupted_evaluation_resumes_where_it_stopped(tiny_models, tmp_path, monkeypatch):
    data = demo_file(tmp_path / "mini.jsonl", 5)
    args = ["eval", "--data", data, "--model", tiny_models["teacher"], "-n", 4, "--temperature", 1.0,
            "--max-new-tokens", 10, "--batch-size", 6]  # fmt: skip
    assert run_cli(*args, "-o", tmp_path / "whole").exit_code == 0
    generated: list[int] = []
    real = session.load_generator

    def counting(stop_after: int | None):
        def load(request, ref):
            generator, tokenizer = real(request, ref)
            generate = generator.generate

            def interrupted(prompts, sampling):
                if len(generated) == stop_after:
                    raise KeyboardInterrupt
                generated.append(len(prompts))
                return generate(prompts, sampling)

            generator.generate = interrupted
            return generator, tokenizer

        return load

    monkeypatch.setattr(session, "load_generator", counting(stop_after=2))
    cut = run_cli(*args, "-o", tmp_path / "cut")
    assert cut.exit_code == 130 and len(responses(tmp_path / "cut")) == 12 == sum(generated)
    assert not (tmp_path / "cut" / "summary.json").exists()
    generated.clear()
    monkeypatch.setattr(session, "load_generator", counting(stop_after=None))
    resumed = run_cli(*args, "-o", tmp_path / "cut")
    assert resumed.exit_code == 0, resumed.output
    assert sum(generated) == 20 - 12  # only what was missing
    # the same chunks with the same seeds: the same answers as an uninterrupted evaluation
    assert sorted_responses(tmp_path / "cut") == sorted_responses(tmp_path / "whole")
    other = run_cli(*args[:-2], "--batch-size", 3, "-n", 2, "-o", tmp_path / "whole")
    assert other.exit_code == 1 and "other settings (n: 4 there, 2 now)" in other.output


@pytest.mark.slow
@pytest.mark.parametrize("kept", [3, 9, 14])
def test_an_evaluation_cut_inside_a_chunk_resumes_to_the_same_answers(tiny_models, tmp_path, kept):
    data = demo_file(tmp_path / "mini.jsonl", 5)
    args = ["eval", "--data", data, "--model", tiny_models["teacher"], "-n", 4, "--temperature", 1.0,
            "--max-new-tokens", 10, "--batch-size", 6]  # fmt: skip
    assert run_cli(*args, "-o", tmp_path / "whole").exit_code == 0
    cut = Path(shutil.copytree(tmp_path / "whole", tmp_path / "cut"))
    (cut / "summary.json").unlink()
    lines = (cut / "responses.jsonl").read_text().splitlines(keepends=True)
    (cut / "responses.jsonl").write_text("".join(lines[:kept]))  # a disk that filled up mid-chunk
    resumed = run_cli(*args, "-o", cut)
    assert resumed.exit_code == 0, resumed.output
    assert sorted_responses(cut) == sorted_responses(tmp_path / "whole")


def test_a_resume_with_other_settings_names_the_one_that_differs():
    from opdctl.evaluation.results import _first_difference

    def settings(bench: str, prompt: str = "{problem}") -> dict:
        return {"n": 4, "benchmarks": [bench], f"benchmark {bench}": {"digest": "d", "problems": 2, "prompt": prompt}}

    assert _first_difference(settings("amc23"), settings("amc23")) is None
    changed = _first_difference(settings("amc23"), settings("aime24"), first="benchmarks")
    assert changed == 'benchmarks: ["amc23"] there, ["aime24"] now'
    changed = _first_difference(settings("amc23"), settings("amc23", "Q: {problem}"), first="benchmarks")
    assert changed == 'benchmark amc23\'s prompt: "{problem}" there, "Q: {problem}" now'


@pytest.mark.slow
def test_in_training_evaluation_of_a_benchmark_file_logs_pass_at_k(tiny_models, tmp_path):
    data = demo_file(tmp_path / "held.jsonl", 3)
    evaluation = {"bench": [str(data)], "n": 2, "temperature": 1.0, "top_p": 0.9, "pass_k": [1, 2], "max_new_tokens": 8}
    config = tiny_config(tiny_models, tmp_path / "run", eval=evaluation, optim={"steps": 2})
    result = run_cli("train", "-c", write_config(tmp_path / "c.yaml", config))
    assert result.exit_code == 0, result.output
    evals = [r for r in read_metrics(tmp_path / "run") if "eval" in r]
    assert [(r["eval"], r["when"], r["samples"]) for r in evals] == [("held", "before", 6), ("held", "after", 6)]
    assert all({"accuracy", "pass@1", "pass@2", "maj@2", "mean_length", "truncated"} <= set(r) for r in evals)


@pytest.mark.slow
def test_in_training_held_out_reverse_kl_is_logged_and_summarised(tiny_models, tmp_path):
    data = demo_file(tmp_path / "held.jsonl", 4)
    evaluation = {"bench": [str(data)], "max_new_tokens": 12, "reverse_kl": True}
    config = tiny_config(tiny_models, tmp_path / "run", eval=evaluation, optim={"steps": 2, "lr": 1e-12})
    result = run_cli("train", "-c", write_config(tmp_path / "c.yaml", config))
    assert result.exit_code == 0, result.output
    before, after = [r for r in read_metrics(tmp_path / "run") if "eval" in r]
    assert before["reverse_kl"] > 0 and before["reverse_kl_tokens"] > 0
    assert after["reverse_kl"] == pytest.approx(before["reverse_kl"])  # same draws, no learning
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["eval_reverse_kl"]["held"] == {"before": before["reverse_kl"], "after": after["reverse_kl"]}
    assert "student reverse KL to the teacher on held" in result.output
    assert summary["eval_unanswered"]["held"] == {"before": before["no_answer"], "after": after["no_answer"],
                                                  "teacher": None}  # fmt: skip
    assert f"{before['no_answer']:.1%} unanswered" in result.output


@pytest.mark.slow
def test_held_out_reverse_kl_of_a_model_to_itself_is_zero(tiny_models, tmp_path):
    from opdctl.evaluation.divergence import held_out_reverse_kl
    from opdctl_hf import HFStudent, HFTeacher

    student = HFStudent(HFStudent.Config(model=str(tiny_models["teacher"])))
    teacher = HFTeacher(HFTeacher.Config(model=str(tiny_models["teacher"])))
    bench = load_benchmarks([str(demo_file(tmp_path / "held.jsonl", 5))])[0]
    kl, tokens = held_out_reverse_kl(student, teacher, student.tokenizer, bench, 16, 0, False)
    assert tokens > 20 and abs(kl) < 1e-5


# errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--data", "nowhere.jsonl"], ["data file not found: nowhere.jsonl"]),
        (["--bench", "aime2024"], ["unknown benchmark 'aime2024'", "aime24"]),
        (["--data", "{bad}", "--bench", "aime24"], ["no answer column", "answer, Answer", "--answer-field"]),
        (["--bench", "synthetic", "-n", "2", "--pass-k", "4"], ["--pass-k 4 is larger than -n 2"]),
        (["--bench", "synthetic", "--pass-k", "x"], ["--pass-k takes whole numbers"]),
        (["--bench", "synthetic", "--backend", "tgi"], ["unknown teacher backend 'tgi': set --backend to 'hf'"]),
        (["--bench", "synthetic", "--dtype", "float8"], ["--dtype 'float8': input should be 'auto', 'float32'"]),
        (["--bench", "synthetic", "--device", "tpu"], ["--device 'tpu': string should match"]),
        (["--bench", "synthetic", "--top-p", "0"], ["--top-p 0: must be above 0 (at 1 every token can be sampled)"]),
        (["--bench", "synthetic", "--base-url", "http://127.0.0.1:9/v1"], ["--base-url needs --served-model"]),
        (["--bench", "synthetic", "--served-model", "m"], ["--served-model needs --base-url"]),
        (["--bench", "synthetic", "--model", "{empty}"], ["no model at", "config.json"]),
        (["--bench", "synthetic", "--model", "{run}"], ["has no complete checkpoint yet"]),
        (["--bench", "synthetic", "--model", "demo:teacher", "--checkpoint", "3"], ["--checkpoint needs --model"]),
        (["--bench", "synthetic", "--prompt-template", "Solve it"], ["has no {problem}"]),
        (
            ["--bench", "synthetic", "--base-url", "http://127.0.0.1:9/v1", "--served-model", "m", "--model", "{tiny}"],
            ["cannot reach the vLLM server at http://127.0.0.1:9/v1", "start it"],
        ),
    ],
)
def test_bad_eval_input_is_one_line(tiny_models, tmp_path, args, fragments):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "1+1", "sol": "2"}])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "empty").mkdir()
    paths = {"{bad}": bad, "{run}": run, "{empty}": tmp_path / "empty", "{tiny}": tiny_models["teacher"]}
    args = [str(paths.get(a, a)) for a in args]
    model = [] if "--model" in args else ["--model", "demo:teacher"]
    result = run_cli("eval", *model, *args, "-o", tmp_path / "o")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("error: ")
    for fragment in fragments:
        assert fragment in line, line
    assert not (tmp_path / "o").exists()  # nothing is written before the model and the data load
