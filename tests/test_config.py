import pytest

from server.config import ROOT, SETTINGS, ConfigError, load_config


def test_defaults_load(tmp_path):
    c = load_config(path=tmp_path / "absent.toml", env={})
    assert c.port == 8080 and c.host == "127.0.0.1"
    assert c.database_url.startswith("sqlite:///")


def test_default_file_is_valid():
    c = load_config(path=ROOT / "conf" / "cloudfilm.toml", env={})
    assert c.charset_fallback == "GB18030"


def test_env_overrides_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('port = 9000\n')
    c = load_config(path=f, env={"CLOUDFILM_PORT": "9100"})
    assert c.port == 9100
    assert c.origins["port"] == "environment CLOUDFILM_PORT"


@pytest.mark.parametrize("text,needle", [
    ("colour = 1\n", "unknown setting 'colour'"),
    ('port = "eighty"\n', "setting 'port'"),
    ("port = 0\n", "at least 1"),
    ('demo_data = "perhaps"\n', "true or false"),
    ('charset_fallback = "KOI8"\n', "one of"),
    ('database_url = "postgres://x/y"\n', "database_url"),
    ('host = "0.0.0.0"\n', "loopback"),
    ("port = [\n", "not valid TOML"),
])
def test_bad_file_values_name_the_setting(tmp_path, text, needle):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path=f, env={})
    assert needle in str(e.value)


def test_unknown_env_variable_is_refused(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(path=tmp_path / "x.toml", env={"CLOUDFILM_PROT": "1"})
    assert "CLOUDFILM_PROT" in str(e.value)


def test_bad_env_value(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(path=tmp_path / "x.toml", env={"CLOUDFILM_RENDER_THREADS": "many"})
    assert "render_threads" in str(e.value)


def test_every_setting_is_documented():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for s in SETTINGS:
        assert s.help.strip(), s.name
        assert f"`{s.name}`" in readme, f"setting {s.name} missing from README.md"
