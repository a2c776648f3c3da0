"""The two quick-start commands: each installs only what is missing (scripts/ensure_installed.sh), then runs the
main job / the tests; .ci/run is the tests one."""
import os
import re
import subprocess
import venv

from tests.conftest import REPO


def bash(*args, env=None):
    return subprocess.run(['bash', *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def test_readme_quick_start_is_two_commands_and_ci_runs_the_tests_one():
    readme = (REPO / 'README.md').read_text()
    block = re.search(r'## Quick start.*?```bash\n(.*?)```', readme, re.S).group(1)
    commands = [line.split('#')[0].strip() for line in block.splitlines() if line.split('#')[0].strip()]
    assert commands == ['bash scripts/run_main_job.sh', 'bash scripts/run_tests.sh']
    ci = [line for line in (REPO / '.ci' / 'run').read_text().splitlines() if line and not line.startswith('#')]
    assert ci[-1] == 'bash scripts/run_tests.sh'


def test_ensure_installed_does_nothing_when_everything_is_installed():
    out = bash('scripts/ensure_installed.sh', '--dev')
    assert out.returncode == 0 and out.stdout == '' and out.stderr == '', out.stdout + out.stderr


def test_ensure_installed_names_what_a_bare_python_lacks(tmp_path):
    venv.create(tmp_path / 'bare', with_pip=False)
    out = bash('scripts/ensure_installed.sh', '--check', env={'PYTHON': str(tmp_path / 'bare' / 'bin' / 'python')})
    assert out.returncode == 1
    for name in ('torch', 'basicsr', 'diffusers', 'imageio-ffmpeg', 'vrpsr_plugin (editable install'):
        assert name in out.stdout, out.stdout


def test_run_tests_script_runs_pytest_with_its_arguments():
    out = bash('scripts/run_tests.sh', 'tests/test_requirements.py')
    assert out.returncode == 0 and re.search(r'\b2 passed\b', out.stdout), out.stdout + out.stderr


def test_run_main_job_script_ensures_then_runs_the_main_job():
    lines = [line for line in (REPO / 'scripts' / 'run_main_job.sh').read_text().splitlines()
             if line and not line.startswith('#')]
    assert lines[-2:] == ['bash scripts/ensure_installed.sh', 'exec bash scripts/main_job.sh "$@"']
