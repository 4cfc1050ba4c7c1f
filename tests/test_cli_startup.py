"""Start-up of the command line: a run imports only its own command's module, and the map says where each is."""

from __future__ import annotations

import json
import subprocess
import sys


def test_command_map_names_every_registered_command():
    import typer

    from meditune.cli import COMMANDS, build_app
    from meditune.commands.eval import MCQA_COMMANDS, OPEN_COMMANDS

    full = typer.main.get_command(build_app())
    assert set(full.commands) == set(COMMANDS)
    assert set(full.commands["eval"].commands) == {*MCQA_COMMANDS, *OPEN_COMMANDS}
    for word in COMMANDS:  # each command line builds an app holding that command
        assert word in typer.main.get_command(build_app([word, "--help"])).commands
    only_mcqa = typer.main.get_command(build_app(["-v", "eval", "mcqa", "data.jsonl"]))
    assert set(only_mcqa.commands) == {"eval"} and set(only_mcqa.commands["eval"].commands) == set(MCQA_COMMANDS)
    assert set(typer.main.get_command(build_app(["eval", "nope"])).commands["eval"].commands) == \
        {*MCQA_COMMANDS, *OPEN_COMMANDS}  # an unknown sub-command gets the whole group (and its usage error)


def test_eval_mcqa_imports_nothing_of_the_other_commands():
    code = ("import sys; from meditune.cli import build_app; build_app(['eval', 'mcqa', '--help']); "
            "import json; print(json.dumps(sorted(m for m in sys.modules if m.startswith(('meditune', 'torch')))))")
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                           check=True).stdout))
    assert "meditune.evaluation.mcqa" in loaded
    unrelated = {"meditune.evaluation.openqa", "meditune.generation.stage", "meditune.prefs", "meditune.training",
                 "meditune.pipeline", "meditune.scoring", "meditune.merging", "meditune.commands.eval_open", "torch"}
    assert not loaded & unrelated
