"""One convention for user errors across the commands (issue 16 item 7): ``vrpsr eval`` as ``vrpsr export`` and
``train.py`` (tests/test_export.py, tests/test_resume.py): one ``error:`` line, status 2, no traceback unless
``--debug``, no output folder."""
import pytest

from vrpsr_plugin.atomic_io import write_png
from vrpsr_plugin.cli import main as vrpsr


@pytest.mark.parametrize('data,model,message', [
    ('nowhere', 'identity', 'data folder nowhere does not exist'),
    ('data', 'a=missing.pth', "model 'a': missing.pth does not exist"),
    ('data', 'a=bad.pth', "cannot read checkpoint 'bad.pth' (corrupt, truncated or not a checkpoint): "
                          'not a PyTorch checkpoint'),
])
def test_eval_user_errors_are_one_line(tmp_path, monkeypatch, capsys, photo, data, model, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'data').mkdir()
    write_png(tmp_path / 'data/a.png', photo)
    (tmp_path / 'bad.pth').write_bytes(b'junk\n')
    args = ['eval', '--data', data, '--models', model, '--out', 'out', '--codecs', 'libx264', '--qps', '32',
            '--size', '32', '--no-progress', '--metrics', 'psnr', '--fid', 'off']
    assert vrpsr(args) == 2
    err = capsys.readouterr().err
    assert err == f'vrpsr eval: error: {message}\n'
    assert not (tmp_path / 'out').exists()
    assert vrpsr(['--debug', *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith('Traceback') and err.endswith(f'vrpsr eval: error: {message}\n')
