"""People in a room: joining, identity bound to a token, the instructor, and who may act on a run."""
import sqlite3

import pytest

from conftest import tiny_config
from optlab import people
from optlab.people import JoinError, Person, can_act


def test_names_with_letters_of_any_script_are_fine(store):
    assert people.join(store, "Zoë O'Brien-Łukasz 2")[0].name == "Zoë O'Brien-Łukasz 2"


def test_joining_returns_a_token_that_identifies_the_person(store):
    ada, token = people.join(store, "  Ada   Lovelace ")
    assert ada.name == "Ada Lovelace" and not ada.is_instructor
    assert people.identify(store, token) == ada
    assert people.identify(store, token + "x") is None
    assert people.identify(store, None) is None


def test_only_the_hash_of_the_token_is_stored(store):
    _, token = people.join(store, "ada")
    with sqlite3.connect(store.path) as db:
        dump = "\n".join(db.iterdump())
    assert token not in dump and people._hash(token) in dump


def test_a_taken_name_is_refused_whatever_its_case(store):
    people.join(store, "Grace")
    with pytest.raises(JoinError, match="taken"):
        people.join(store, "grace")
    assert [p.name for p in people.people(store)] == ["Grace"]


@pytest.mark.parametrize("name, why", [("", "type a name"), ("x" * 41, "at most"), ("a\u0000b", "letters"), ("![x](http://e.com/i.png)", "letters")])
def test_unusable_names_are_refused_with_the_reason(store, name, why):
    with pytest.raises(JoinError, match=why):
        people.join(store, name)


def test_the_instructor_is_whoever_gives_the_secret(store, monkeypatch):
    ada, token = people.join(store, "ada")
    with pytest.raises(JoinError, match="no instructor"):
        people.promote(store, ada, "anything")
    monkeypatch.setenv("OPTLAB_INSTRUCTOR_SECRET", "s3cret-room")
    with pytest.raises(JoinError, match="not the instructor secret"):
        people.promote(store, ada, "guess")
    assert people.promote(store, ada, "s3cret-room").is_instructor
    assert people.identify(store, token).is_instructor   # survives a reload: the role is stored


def test_a_short_instructor_secret_is_ignored(monkeypatch):
    monkeypatch.setenv("OPTLAB_INSTRUCTOR_SECRET", "short")
    assert people.instructor_secret() is None and not people.is_instructor_secret("short")


def test_participants_act_on_their_own_runs_and_the_instructor_on_all(store):
    mine = store.get(store.submit(tiny_config(), user="ada"))
    theirs = store.get(store.submit(tiny_config(), user="grace"))
    unnamed = store.get(store.submit(tiny_config(), user=""))
    ada, boss = Person("ada"), Person("lin", "instructor")
    assert can_act(ada, mine) and not can_act(ada, theirs) and not can_act(ada, unnamed)
    assert all(can_act(boss, r) for r in (mine, theirs, unnamed))
    assert not can_act(None, mine)
    assert "grace's run" in people.refusal(ada, theirs) and people.refusal(ada, mine) is None
