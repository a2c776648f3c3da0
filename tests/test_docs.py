"""Every path and command cited in README.md, docs/, options/ (and the ComfyUI README) exists, or is produced by an
earlier documented step: ``experiments/<name>/`` by training an option file named ``<name>``, ``datasets/demo/``
by ``vrpsr demo-data``. The files are read when the test runs, so new documentation is checked too."""
import argparse
import importlib
import importlib.util
import re
import shlex
from pathlib import Path
from typing import Iterator, List

import pytest
import yaml

from tests.conftest import REPO
from vrpsr_plugin.cli import SUBCOMMANDS
from vrpsr_plugin.data.demo_images import DEMO_SPLITS

DOCS = sorted([REPO / 'README.md', REPO / 'CONTRIBUTING.md', REPO / 'comfy_nodes' / 'README.md',
               *(REPO / 'docs').glob('*.md')])
OPTIONS = sorted((REPO / 'options').rglob('*.yml'))
# Repository paths (folders of the checkout followed by a file or folder name).
REPO_PATH = re.compile(r'(?<![\w./-])((?:options|docs|scripts|benchmarks|tests|vrpsr_plugin|comfy_nodes|\.ci)/'
                       r'[\w./-]*[\w/])')
PRODUCED = re.compile(r'(?<![\w./-])((?:experiments|datasets/demo)/[\w./-]*\w)')


def rel(path: Path) -> Path:
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def option_names() -> set:
    """``name:`` of every option file: training it produces ``experiments/<name>/``."""
    return {yaml.safe_load(path.read_text()).get('name') for path in OPTIONS}


def code_lines(text: str) -> Iterator[str]:
    """Lines of fenced code blocks and inline code spans: where commands are cited."""
    for block in re.findall(r'```[^\n]*\n(.*?)```', text, re.S):
        yield from block.splitlines()
    for span in re.findall(r'(?<!`)`([^`\n]+)`(?!`)', re.sub(r'```.*?```', '', text, flags=re.S)):
        yield span


def check_path(ref: str, where: Path) -> List[str]:
    ref = ref.rstrip('.')
    if '*' in ref or '<' in ref or 'X' == ref.split('/')[-1]:
        return []
    if not (REPO / ref).exists() and not (where.parent / ref).exists():
        return [f'{rel(where)}: {ref} does not exist']
    return []


def check_produced(ref: str, where: Path, names: set, written: set) -> List[str]:
    parts = ref.split('/')
    if parts[0] == 'experiments':
        if ref in written or '/'.join(parts[:2]) in written:
            return []
        if len(parts) > 1 and parts[1] not in names and not re.search(r'[A-Z]{3,}|\.\.\.', parts[1]):
            return [f'{rel(where)}: {ref}: no option file is named {parts[1]!r}']
        return []
    if len(parts) > 2 and parts[2] not in DEMO_SPLITS:
        return [f'{rel(where)}: {ref}: `vrpsr demo-data` writes only {sorted(DEMO_SPLITS)}']
    return []


def subcommand_options(name: str) -> set:
    parser = argparse.ArgumentParser()
    importlib.import_module(SUBCOMMANDS[name][0]).add_arguments(parser)
    return _options(parser) | {'--debug'}


def _options(parser: argparse.ArgumentParser) -> set:
    """Option strings of ``parser`` and of its nested sub-commands (``vrpsr eic encode ...``)."""
    found = set()
    for action in parser._actions:
        found |= set(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _options(sub)
    return found


def check_command(line: str, where: Path) -> List[str]:
    line = line.split(' #')[0].strip().lstrip('$ ')
    try:
        words = shlex.split(line)
    except ValueError:
        words = line.split()
    while words and re.match(r'^[A-Z_]+=', words[0]):  # VAR=value prefix
        words = words[1:]
    if not words:
        return []
    problems, at = [], rel(where)
    if words[0] == 'vrpsr' and len(words) > 1 and re.fullmatch(r'[a-z][\w-]*', words[1]):  # not its output
        if words[1] not in SUBCOMMANDS:
            return [f'{at}: `{line}`: no subcommand {words[1]!r}']
        known = subcommand_options(words[1])
        flags = (w.strip('[(|)]').split('=')[0] for w in words[2:])
        problems += [f'{at}: `{line}`: vrpsr {words[1]} has no option {flag}' for flag in flags
                     if flag.startswith('--') and flag not in known]
    elif words[0] in ('python', 'python3') and len(words) > 2 and words[1] == '-m':
        module = words[2]
        if module == 'basicsr.train':
            problems.append(f'{at}: `{line}`: basicsr.train never imports vrpsr_plugin (use vrpsr_plugin.train)')
        elif importlib.util.find_spec(module) is None:
            problems.append(f'{at}: `{line}`: no module {module}')
    elif words[0] in ('python', 'python3', 'bash') and len(words) > 1 and words[1].endswith(('.py', '.sh')):
        if not (REPO / words[1]).is_file():
            problems.append(f'{at}: `{line}`: {words[1]} does not exist')
    return problems


def check_imports(text: str, where: Path) -> List[str]:
    """``from vrpsr_plugin.x import a, b`` in code blocks: the module and names exist."""
    problems = []
    for module, names in re.findall(r'^\s*from (vrpsr_plugin[\w.]*) import ([\w, ]+)', text, re.M):
        mod = importlib.import_module(module)
        names = [n.split(' as ')[0].strip() for n in names.split(',')]
        problems += [f'{rel(where)}: {module} has no {n}' for n in names if n and not hasattr(mod, n)]
    return problems


def references(path: Path) -> List[str]:
    text = path.read_text(encoding='utf-8')
    names = option_names()
    problems = []
    for ref in REPO_PATH.findall(text):
        problems += check_path(ref, path)
    # folders the document itself writes first (save_pretrained('experiments/x'), --out experiments/x, ...)
    written = set(re.findall(r'(?:save_pretrained\(|--out |-o )[\'"]?(experiments/[\w./-]*\w)', text))
    for ref in PRODUCED.findall(text):
        problems += check_produced(ref, path, names, written)
    for target in re.findall(r'\]\(([^)#\s]+)\)', text):
        if not re.match(r'\w+://', target) and not (path.parent / target).exists():
            problems.append(f'{rel(path)}: link {target} does not exist')
    if path.suffix == '.md':
        for line in code_lines(text):
            problems += check_command(line, path)
        problems += check_imports(text, path)
    else:  # option files: commands in their comments
        for line in re.findall(r'^\s*#\s*(.*)$', text, re.M):
            problems += check_command(line, path)
    return problems


@pytest.mark.parametrize('path', DOCS + OPTIONS, ids=lambda p: str(p.relative_to(REPO)))
def test_cited_paths_and_commands_exist(path):
    assert references(path) == []


def test_cited_top_level_documents_exist():
    """``DESIGN.md``-style mentions anywhere in the package, scripts, docs and options name files that exist."""
    files = [p for ext in ('py', 'md', 'txt', 'sh', 'yml', 'toml') for p in REPO.rglob(f'*.{ext}')
             if p != Path(__file__) and not any(part.startswith('.') for part in p.relative_to(REPO).parts)]
    problems = [f'{rel(path)}: {name} does not exist' for path in files
                for name in set(re.findall(r'\b([A-Z][A-Z_]+\.md)\b', path.read_text(errors='replace')))
                if not any((folder / name).is_file() for folder in (REPO, REPO / 'docs', path.parent))]
    assert problems == []


def test_the_checker_finds_the_broken_references_it_is_for(tmp_path):
    bad = tmp_path / 'probe.md'
    bad.write_text('Run `python -m vrpsr_plugin.train -opt options/smoke/vrpsr_realesrgan.yml`, then '
                   '`python -m basicsr.train -opt x.yml` and `vrpsr compress a.png b.png --nope 1`; see '
                   '[design](DESIGN.md); load experiments/train_simulator/models/net_g_latest.pth.\n')
    found = '\n'.join(references(bad))
    for expected in ('options/smoke/vrpsr_realesrgan.yml does not exist', 'basicsr.train never imports',
                     'has no option --nope', 'link DESIGN.md', "no option file is named 'train_simulator'"):
        assert expected in found, found
