"""``experiential`` command line: learn, generate, score, experiences, feedback, demo, serve, chat.

Every command has ``--help``. Model arguments take an embedded name (``default`` =
Qwen2.5-Coder-0.5B-Instruct, ``smoke`` = SmolLM2-135M-Instruct), a local directory, a local GGUF file
or a Hugging Face hub id.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from .config import ELConfig, field_docs
from .experience import Experience, ExperienceError, load_jsonl


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default",
                   help="embedded name (default, smoke, critic), local dir, .gguf file or hub id "
                        "(default: %(default)s = Qwen2.5-Coder-0.5B-Instruct)")
    p.add_argument("--adapter", help="a PEFT adapter directory to apply")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), fp32, bf16")
    p.add_argument("--device", default="auto")


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    from .models import load_model

    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    if getattr(args, "adapter", None):
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter).eval()
    return model, tok


def _prompt_messages(text: str, system: str | None = None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": text}]


# -- learn ------------------------------------------------------------------------------------
def _add_config_flags(p: argparse.ArgumentParser) -> None:
    docs = field_docs()
    defaults = ELConfig()
    for name, value in defaults.to_dict().items():
        if name in ("device", "dtype", "progress"):
            continue
        flag = "--" + name.replace("_", "-")
        help_ = docs.get(name, "") + f" (default: {value!r})"
        if isinstance(value, bool):
            p.add_argument(flag, dest=name, default=None, action=argparse.BooleanOptionalAction,
                           help=help_)
        else:
            kind = type(value) if value is not None and not isinstance(value, (list, str)) else str
            if name in ("topk", "max_steps"):
                kind = int
            if name == "epochs":
                kind = float
            if name == "stop_kl":
                kind = _float_or_none
            p.add_argument(flag, dest=name, type=kind, default=None, help=help_)


def _float_or_none(s: str) -> float | None:
    return None if s.lower() in ("none", "off") else float(s)


def _config_from_args(args: argparse.Namespace) -> ELConfig:
    cfg = ELConfig.from_file(args.config) if args.config else ELConfig()
    changes = {k: getattr(args, k) for k in cfg.to_dict()
               if getattr(args, k, None) is not None}
    changes.update(dtype=args.dtype, device=args.device)
    return cfg.replace(**changes)


def cmd_learn(args: argparse.Namespace) -> int:
    """Also runs data-parallel under ``torchrun``/``accelerate launch``: every process learns, and
    rank 0 alone prints, saves and records the adapter in the store."""
    from .distributed import is_main_process
    from .store import ExperienceStore
    from .trainer import ExperientialTrainer

    main = is_main_process()
    say = print if main else (lambda *a, **k: None)
    cfg = _config_from_args(args)
    if args.experiences:
        exps, errors = load_jsonl(args.experiences, errors="collect")
        for e in errors:
            say(f"skipped: {e}", file=sys.stderr)
        if errors and not args.skip_invalid:
            say(f"{len(errors)} invalid line(s); fix them or pass --skip-invalid", file=sys.stderr)
            return 2
    else:
        store = ExperienceStore(args.store)
        exps = store.list(only_unconsumed=args.only_new)
    if not exps:
        say("no experiences to learn from", file=sys.stderr)
        return 2
    model, tok = _load(args)
    trainer = ExperientialTrainer(model, tok, cfg)
    say(f"learning from {len(exps)} experience(s) with {cfg.objective} "
        f"(context design: {cfg.context_template and 'custom' or cfg.context_design})")
    result = trainer.learn(exps)
    say("in-context gap per experience (before training):")
    for g in result.gaps_before:
        say("  " + g.describe())
    out = trainer.save(args.output)
    if not args.experiences and main:
        version = args.version or Path(args.output).name
        store.mark_consumed([e.id for e in exps], version)
        store.add_adapter(version, str(out), metrics={"gap_before": result.to_dict()["gap_before"],
                                                      "retention": result.to_dict()["retention"]})
    say(result.summary())
    return 0


# -- generate / score -------------------------------------------------------------------------
def cmd_generate(args: argparse.Namespace) -> int:
    from .generation import generate

    model, tok = _load(args)
    out = generate(model, tok, [_prompt_messages(p, args.system) for p in args.prompt],
                   max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                   seed=args.seed)
    for p, o in zip(args.prompt, out):
        print(o[0] if len(args.prompt) == 1 else f"### {p}\n{o[0]}\n")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from .scoring import option_probs

    options = [(" " + o.strip()) if args.leading_space else o for o in args.options.split("/")]
    prompts = [_prompt_messages(p, args.system) for p in args.prompt]
    from .models import load_model

    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    rows = {"base": option_probs(model, tok, prompts, options, args.prefix)}
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter).eval()
        rows["adapter"] = option_probs(model, tok, prompts, options, args.prefix)
    if args.json:
        print(json.dumps({k: v.tolist() for k, v in rows.items()} | {"options": options}))
        return 0
    header = "".join(f"{o!r:>9}" for o in options)
    for i, p in enumerate(args.prompt):
        print(f"prompt: {p[:70]!r}")
        print(f"{'':10}{header}")
        for name, probs in rows.items():
            print(f"{name:10}" + "".join(f"{float(x):9.3f}" for x in probs[i]))
    return 0


# -- experiences ------------------------------------------------------------------------------
def cmd_exp_add(args: argparse.Namespace) -> int:
    from .store import ExperienceStore

    store = ExperienceStore(args.store)
    if args.file:
        exps, errors = load_jsonl(args.file, errors="collect")
        for e in errors:
            print(f"skipped: {e}", file=sys.stderr)
    else:
        if not (args.prompt and args.feedback):
            print("give --prompt and --feedback (and --attempt), or --file", file=sys.stderr)
            return 2
        try:
            exps = [Experience(args.prompt, args.attempt or "", args.feedback,
                               json.loads(args.metadata) if args.metadata else {})]
        except ExperienceError as e:
            print(f"invalid experience: {e}", file=sys.stderr)
            return 2
        errors = []
    ids = store.extend(exps)
    print(f"stored {len(ids)} experience(s) in {args.store}"
          + (f"; {len(errors)} invalid line(s) skipped" if errors else ""))
    return 1 if errors else 0


def cmd_exp_list(args: argparse.Namespace) -> int:
    from .store import ExperienceStore

    store = ExperienceStore(args.store)
    for e in store.list(only_unconsumed=args.only_new, limit=args.limit):
        versions = store.versions_of(e.id)
        print(f"{e.id}  [{', '.join(versions) or 'new'}]  {e.prompt_text[:50]!r} -> "
              f"{e.attempt[:30]!r} | {e.feedback[:60]!r}")
    return 0


def cmd_exp_export(args: argparse.Namespace) -> int:
    from .store import ExperienceStore

    n = ExperienceStore(args.store).export_jsonl(args.output)
    print(f"exported {n} experience(s) to {args.output}")
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    """Show the model's answer to a prompt, read typed feedback, store the experience."""
    from .feedback.human import ask_feedback
    from .generation import generate
    from .store import ExperienceStore

    model, tok = _load(args)
    store = ExperienceStore(args.store)
    prompt = args.prompt or input("prompt> ")
    answer = generate(model, tok, [_prompt_messages(prompt)], max_new_tokens=args.max_new_tokens)[0][0]
    exp = ask_feedback(prompt, answer)
    if exp is None:
        print("no feedback given; nothing stored")
        return 0
    store.append(exp)
    print(f"stored experience {exp.id} in {args.store}")
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    """Run a feedback source over attempts; write experiences (JSONL and/or the store)."""
    from .experience import save_jsonl
    from .feedback import load_attempts, make_source, review_all

    source = make_source(args.source, timeout=args.timeout, show_expected=args.show_expected,
                         include_solution=args.include_solution, critic_url=args.critic_url,
                         critic_model=args.critic_model, critic_local=args.critic_local)
    tasks, attempts = load_attempts(args.input)
    exps = review_all(source, tasks, attempts, workers=args.workers)
    if args.output:
        save_jsonl(exps, args.output)
    if args.store:
        from .store import ExperienceStore

        ExperienceStore(args.store).extend(exps)
    errors = sum(bool(e.metadata.get("feedback_error")) for e in exps)
    verdicts = [e.metadata.get("passed", e.metadata.get("correct")) for e in exps]
    judged = [v for v in verdicts if v is not None]
    line = f"{len(exps)} experiences from {args.source}"
    if judged:
        line += f"; {sum(map(bool, judged))}/{len(judged)} passed or correct"
    if errors:
        line += f"; {errors} without feedback (see their feedback text)"
    print(line + "".join(f"; written to {p}" for p in (args.output, args.store) if p))
    if not args.output and not args.store:
        for e in exps:
            print(json.dumps(e.to_dict(), ensure_ascii=False))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.model, steps=args.steps, seed=args.seed, out=args.output)


def cmd_repro_mmlu(args: argparse.Namespace) -> int:
    from .tasks.mmlu_shift import ShiftConfig, run

    cfg = ShiftConfig(n_questions=args.limit, seed=args.seed, retention_n=args.retention_n,
                      anchors=args.anchors)
    if args.kinds:
        cfg.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    el = _repro_el_config(args)
    model = args.model or ("smoke" if args.smoke else "default")
    if args.smoke:
        cfg.n_questions, cfg.retention_n = 2, 8
    explainer = None
    critic = _critic_from_args(args)
    if critic is not None:
        from .tasks.mmlu_shift import critic_explainer

        explainer = critic_explainer(critic)
    if args.explanations:
        from .tasks.mmlu_shift import explanations_from_file

        explainer = explanations_from_file(args.explanations)
    try:
        report = run(model, args.output, cfg, el, data_dir=args.data_dir, explainer=explainer,
                     **_run_flags(args))
    finally:
        _save_transcript(critic, args.output)
    from .tasks.mmlu_shift import markdown

    print(markdown(report))
    print(f"report written to {args.output}/report.json and report.md")
    return 0


def _run_flags(args: argparse.Namespace) -> dict[str, Any]:
    """What every ``run()`` of a reproduction takes from the command line."""
    return {"allow_download": args.allow_download, "restart": args.restart,
            "command": getattr(args, "command_line", None)}


def _repro_el_defaults(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the experiment's own ELConfig defaults, the sizes ``--smoke`` sets)."""
    if args.experiment == "gsm8k":
        # Published: effective batch 128 over the training experiences.
        return ({"batch_size": min(128, args.train_n), "micro_batch_size": 4, "epochs": 4,
                 "max_length": 2048},
                {"batch_size": 4, "max_steps": 1, "anchor_per_step": 2})
    if args.experiment == "humaneval":
        return ({"max_length": 2048, "epochs": 4},
                {"batch_size": 2, "micro_batch_size": 2, "max_steps": 1, "anchor_per_step": 2})
    return {}, {"max_steps": 2, "anchor_per_step": 2, "batch_size": 4, "micro_batch_size": 4}


def _repro_el_config(args: argparse.Namespace) -> ELConfig:
    """A reproduction's ELConfig. Precedence, lowest first: the experiment's defaults (the
    published setup), the ``--config`` file's keys, ``--smoke``'s tiny sizes, explicit flags
    (``--epochs``, ``--steps``). ``--seed`` is the run's seed and always sets EL's too."""
    defaults, smoke = _repro_el_defaults(args)
    values = dict(defaults)
    if args.config:
        values.update(_config_file_keys(args.config))
    if args.smoke:
        values.update(smoke)
    if args.epochs is not None:
        values["epochs"] = args.epochs
    if args.steps:
        values["max_steps"] = args.steps
    return ELConfig.from_dict({**values, "seed": args.seed})


def _config_file_keys(path: str) -> dict[str, Any]:
    """Only the keys a config file sets: ``ELConfig.from_file`` fills the rest with the library
    defaults, which would silently replace a reproduction's own (e.g. GSM8K's batch of 128)."""
    ELConfig.from_file(path)  # the same checks and errors as everywhere else
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text) or {}
    return json.loads(text)


def cmd_repro_gsm8k(args: argparse.Namespace) -> int:
    from .tasks import gsm8k

    cfg = gsm8k.GSM8KConfig(eval_limit=args.limit or None, train_n=args.train_n, seed=args.seed,
                            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                            grpo=not args.no_grpo, grpo_steps=args.grpo_steps)
    el = _repro_el_config(args)
    model = args.model or ("smoke" if args.smoke else "default")
    if args.smoke:
        cfg.eval_limit, cfg.train_n, cfg.max_new_tokens = 4, 4, 32
        cfg.grpo_steps, cfg.grpo_prompts_per_step, cfg.grpo_num_generations = 1, 2, 2
    critic = _critic_from_args(args)
    try:
        report = gsm8k.run(model, args.output, cfg, el, data_dir=args.data_dir, critic=critic,
                           **_run_flags(args))
    finally:
        _save_transcript(critic, args.output)
    print(gsm8k.markdown(report))
    print(f"report written to {args.output}/report.json, report.md, report.png")
    return 0


def cmd_repro_humaneval(args: argparse.Namespace) -> int:
    from .tasks import humaneval

    cfg = humaneval.HumanEvalConfig(limit=args.limit or None, repeats=args.repeats,
                                    seed=args.seed, max_new_tokens=args.max_new_tokens,
                                    batch_size=args.batch_size,
                                    feedback=[k.strip() for k in args.feedback.split(",")
                                              if k.strip()])
    el = _repro_el_config(args)
    model = args.model or ("smoke" if args.smoke else "default")
    if args.smoke:
        cfg.limit, cfg.repeats, cfg.max_new_tokens = 4, 2, 48
    critic = _critic_from_args(args)
    try:
        report = humaneval.run(model, args.output, cfg, el, data_dir=args.data_dir,
                               critic=critic, **_run_flags(args))
    finally:
        _save_transcript(critic, args.output)
    print(humaneval.markdown(report))
    print(f"report written to {args.output}/report.json, report.md, report.png")
    return 0


def _save_transcript(critic: Any, out: str) -> None:
    """What the critic was asked and said, beside the report, so anyone can inspect what the
    model learned from (cached replies included). Merged with the file from earlier runs into the
    same directory (one entry per request): a resumed run does not ask again for the stages it
    reads back, and a killed run still saves what it asked (``--restart`` deletes the file
    with the stages). Called even when the run fails, for the same reason."""
    if critic is not None and critic.transcript:
        n = critic.dump_transcript(Path(out) / "critic_transcript.jsonl", merge=True)
        print(f"critic transcript ({n} requests) written to {out}/critic_transcript.jsonl")


def _critic_from_args(args: argparse.Namespace) -> Any:
    """A critic from ``--critic-url``/``--critic-model`` (OpenAI-compatible endpoint) or
    ``--critic-local`` (a local model: id, directory, .gguf, or ``critic``); None without them."""
    if getattr(args, "critic_url", None):
        from .feedback.critic import Critic, OpenAIBackend

        return Critic(OpenAIBackend(args.critic_url, args.critic_model or "gpt-4o-mini"))
    if getattr(args, "critic_local", None):
        from .feedback.critic import Critic, LocalBackend

        return Critic(LocalBackend(args.critic_local))
    return None


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve

    serve(args.model, host=args.host, port=args.port, state_dir=args.state_dir,
          learn_every=args.learn_every)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from .chat import run_chat

    run_chat(args.url, api_key=args.api_key)
    return 0


# -- parser -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="experiential",
        description="Experiential Learning: a language model learns from its own attempts plus "
                    "free-text feedback, by self-distillation into a LoRA adapter.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("learn", help="experiences (JSONL or store) -> adapter directory",
                       description="Apply an EL update and save the adapter. Reports the "
                                   "in-context gap before training and retention on unrelated "
                                   "probe questions before/after.")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--experiences", help="JSONL file of experiences")
    src.add_argument("--store", help="SQLite experience store")
    s.add_argument("--output", "-o", required=True, help="adapter output directory")
    s.add_argument("--config", help="YAML/JSON file of ELConfig fields (flags override it)")
    s.add_argument("--only-new", action="store_true", help="with --store: unconsumed experiences")
    s.add_argument("--version", help="with --store: version name recorded for this adapter")
    s.add_argument("--skip-invalid", action="store_true",
                   help="learn from the valid lines even if some lines are invalid")
    _model_arg(s)
    _add_config_flags(s)
    s.set_defaults(func=cmd_learn)

    s = sub.add_parser("generate", help="prompt -> answer (with or without an adapter)")
    s.add_argument("prompt", nargs="+")
    s.add_argument("--system")
    s.add_argument("--max-new-tokens", type=int, default=256)
    s.add_argument("--temperature", type=float, default=0.0)
    s.add_argument("--seed", type=int, default=0)
    _model_arg(s)
    s.set_defaults(func=cmd_generate)

    s = sub.add_parser("score", help="probabilities of answer options, before and after an adapter",
                       description="Score options (e.g. A/B/C/D) as continuations of the "
                                   "assistant's --prefix, tokenized with a leading space.")
    s.add_argument("prompt", nargs="+")
    s.add_argument("--options", default="A/B/C/D", help="slash-separated (default: %(default)s)")
    s.add_argument("--prefix", default="The answer is")
    s.add_argument("--no-leading-space", dest="leading_space", action="store_false",
                   help="score options exactly as given (default: prepend a space)")
    s.add_argument("--system")
    s.add_argument("--json", action="store_true")
    _model_arg(s)
    s.set_defaults(func=cmd_score)

    s = sub.add_parser("experiences", help="add, list or export stored experiences")
    esub = s.add_subparsers(dest="action", required=True)
    e = esub.add_parser("add", help="add one experience (flags) or a JSONL file")
    e.add_argument("--store", required=True)
    e.add_argument("--file")
    e.add_argument("--prompt")
    e.add_argument("--attempt")
    e.add_argument("--feedback")
    e.add_argument("--metadata", help="JSON object")
    e.set_defaults(func=cmd_exp_add)
    e = esub.add_parser("list", help="list stored experiences and which adapters used them")
    e.add_argument("--store", required=True)
    e.add_argument("--only-new", action="store_true")
    e.add_argument("--limit", type=int)
    e.set_defaults(func=cmd_exp_list)
    e = esub.add_parser("export", help="export the store to JSONL")
    e.add_argument("--store", required=True)
    e.add_argument("--output", "-o", required=True)
    e.set_defaults(func=cmd_exp_export)

    s = sub.add_parser("feedback", help="show an answer, type feedback, store the experience")
    s.add_argument("--store", required=True)
    s.add_argument("--prompt")
    s.add_argument("--max-new-tokens", type=int, default=256)
    _model_arg(s)
    s.set_defaults(func=cmd_feedback)

    s = sub.add_parser("review", help="run a feedback source (tests, io, answer, critic) over "
                                      "attempts and write the experiences")
    s.add_argument("--source", required=True, choices=["tests", "io", "answer", "critic"])
    s.add_argument("--input", "-i", required=True,
                   help="JSONL: prompt, attempt, and reference / tests + entry_point as needed")
    s.add_argument("--output", "-o", help="experiences JSONL")
    s.add_argument("--store", help="append the experiences to this SQLite store")
    s.add_argument("--workers", type=int, default=2, help="parallel reviews (sandbox runs, "
                                                         "critic requests)")
    s.add_argument("--timeout", type=float, default=10.0, help="seconds per sandboxed run")
    s.add_argument("--show-expected", action="store_true", help="io: also print expected values")
    s.add_argument("--include-solution", action="store_true",
                   help="answer: quote the reference solution in the feedback")
    s.add_argument("--critic-url")
    s.add_argument("--critic-model")
    s.add_argument("--critic-local")
    s.set_defaults(func=cmd_review)

    s = sub.add_parser("demo", help="end to end: answer, get feedback, learn, answer again")
    s.add_argument("--model", default="default")
    s.add_argument("--steps", type=int, help="EL steps (default: the ELConfig default)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--output", default="runs/demo", help="where the adapter and report go")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("repro", help="reproduce a published experiment and write a report")
    rsub = s.add_subparsers(dest="experiment", required=True)

    def run_flags(r: argparse.ArgumentParser, output: str) -> None:
        r.add_argument("--data-dir", help="benchmark data (default: $EXPERIENTIAL_DATA, "
                                          "../shared/data)")
        r.add_argument("--allow-download", action="store_true",
                       help="load the benchmark from the Hugging Face hub when no local copy "
                            "has it (needs network and the datasets package)")
        r.add_argument("--output", "-o", default=output)
        r.add_argument("--restart", action="store_true",
                       help="delete the stages of an earlier run in --output and redo them")
        r.add_argument("--smoke", action="store_true", help="tiny sizes on SmolLM2-135M (or on "
                                                            "--model)")

    def critic_flags(r: argparse.ArgumentParser, what: str) -> None:
        r.add_argument("--critic-url", help=f"OpenAI-compatible endpoint that writes {what}")
        r.add_argument("--critic-model", help="model name at --critic-url (default gpt-4o-mini)")
        r.add_argument("--critic-local", help=f"local model that writes {what} (`critic`: the "
                                              "embedded Qwen2.5-Coder-1.5B-Instruct)")

    r = rsub.add_parser("mmlu", help="MMLU answer-probability shift (letter / letter + "
                                     "explanation / explanation / wrong-letter control)")
    r.add_argument("--model", help="default: the embedded default (`smoke` with --smoke)")
    r.add_argument("--limit", type=int, default=8, help="questions the model gets wrong")
    r.add_argument("--steps", type=int, help="EL steps per kind (default: from --epochs)")
    r.add_argument("--epochs", type=float, help="passes over the experiences (default: the "
                                                "config's: at most 16, ended by its stop rule)")
    r.add_argument("--retention-n", type=int, default=48)
    from .tasks.mmlu_shift import ANCHOR_SETS

    r.add_argument("--anchors", choices=ANCHOR_SETS, default="builtin",
                   help="replay anchors: the built-in everyday set, the built-in exam set (208 "
                        "exam-style questions), or the MMLU dev questions (from the probes' "
                        "distribution; slower steps)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--kinds", help="comma-separated subset of letter,letter_explanation,"
                                   "explanation,control (default: all four)")
    r.add_argument("--explanations", help="JSONL of {question_id, explanation} (e.g. from "
                                          "`repro mmlu-explain`); default: a content stand-in")
    critic_flags(r, "the explanations")
    r.add_argument("--config", help="YAML/JSON ELConfig (its keys override the defaults; "
                                    "--smoke, --epochs and --steps override it)")
    r.set_defaults(func=cmd_repro_mmlu)
    run_flags(r, "reports/mmlu")

    def common(r: argparse.ArgumentParser, output: str) -> None:
        r.add_argument("--model", help="default: the embedded default (`smoke` with --smoke)")
        r.add_argument("--seed", type=int, default=0, help="the run's seed (EL's too)")
        r.add_argument("--steps", type=int, help="EL steps (default: from --epochs)")
        r.add_argument("--epochs", type=float, help="EL passes over the experiences (default: 4)")
        r.add_argument("--max-new-tokens", type=int)
        r.add_argument("--batch-size", type=int, default=8, help="generation batch size")
        r.add_argument("--config", help="YAML/JSON ELConfig (its keys override the experiment's "
                                        "defaults; --smoke, --epochs and --steps override it)")
        run_flags(r, output)

    r = rsub.add_parser("gsm8k", help="GSM8K chain of thought: EL vs a GRPO baseline")
    common(r, "reports/gsm8k")
    r.add_argument("--limit", type=int, default=64, help="test problems (0: all 1,319)")
    r.add_argument("--train-n", type=int, default=256)
    r.add_argument("--no-grpo", action="store_true")
    r.add_argument("--grpo-steps", type=int)
    critic_flags(r, "the feedback on each attempt")
    r.set_defaults(func=cmd_repro_gsm8k, max_new_tokens=256)

    r = rsub.add_parser("humaneval", help="HumanEval Monte Carlo cross-validation")
    common(r, "reports/humaneval")
    r.add_argument("--limit", type=int, default=0, help="first N tasks (0: all 164)")
    r.add_argument("--repeats", type=int, default=5)
    r.add_argument("--feedback", default="tests,io",
                   help="comma-separated: tests (tests + traceback), io (printed input/output "
                        "pairs), critic (a critic given the reference solution and the test "
                        "results; needs --critic-url or --critic-local)")
    critic_flags(r, "the feedback for --feedback critic")
    r.set_defaults(func=cmd_repro_humaneval, max_new_tokens=384)

    s = sub.add_parser("serve", help="OpenAI-compatible server that learns from feedback")
    s.add_argument("--model", default="default")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--state-dir", default="runs/serve")
    s.add_argument("--learn-every", type=int, default=8)
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("chat", help="talk to a running server, give feedback, watch it learn")
    s.add_argument("--url", default="http://127.0.0.1:8000")
    s.add_argument("--api-key")
    s.set_defaults(func=cmd_chat)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = "experiential " + shlex.join(argv)  # recorded in reports
    try:
        return int(args.func(args) or 0)
    except (ExperienceError, ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # e.g. a model that is not installed: the message says what to do
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
