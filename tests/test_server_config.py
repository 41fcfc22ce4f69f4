"""The server's settings as Streamlit reads them from .streamlit/config.toml."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_option(monkeypatch, key):
    from streamlit import config
    monkeypatch.chdir(ROOT)
    config.get_config_options(force_reparse=True)
    try:
        return config.get_option(key)
    finally:
        config.get_config_options(force_reparse=True)


def test_the_server_listens_on_this_machine_only_unless_told_otherwise(monkeypatch):
    assert read_option(monkeypatch, "server.address") == "127.0.0.1"


def test_visitors_never_see_tracebacks_or_source(monkeypatch):
    assert read_option(monkeypatch, "client.showErrorDetails") == "none"
