"""Who is at this browser, for every page (not a page itself: app.py and pages import it).

Identity is the personal token from optlab.people, found in this order: the session (this tab,
already known), the person's own link (`?me=TOKEN`, which then moves into a cookie and leaves the
address bar), the `optlab_token` cookie (a reload or a new tab). The name the sidebar shows then
comes from the token, never from what someone types.
"""
from __future__ import annotations

import streamlit as st

from optlab import people
from optlab.people import Person
from optlab.store import Run, Store

COOKIE = "optlab_token"
COOKIE_DAYS = 7


def current(store: Store) -> Person | None:
    state = st.session_state
    token = st.query_params.get("me")
    if token:
        del st.query_params["me"]
        person = people.identify(store, token)
        if person is None:
            st.toast("That personal link is not known on this server.", icon=":material/error:")
        else:
            state["_room_token"] = token
            state["_room_set_cookie"] = True
            state.pop("_room_forgotten", None)
    if state.pop("_room_clear_cookie", False):
        _write_cookie("", 0)
    cookie = None if state.get("_room_forgotten") else st.context.cookies.get(COOKIE)
    cookie = cookie if isinstance(cookie, str) else None   # AppTest has no real cookies
    token = state.get("_room_token") or cookie
    person = people.identify(store, token) if token else None   # each run: the role may have changed
    if person is not None:
        state["_room_token"] = token
    else:
        state.pop("_room_token", None)
    state["person"] = person
    if state.pop("_room_set_cookie", False) and person is not None:
        _write_cookie(token, COOKIE_DAYS * 86400)
    return person


def remember(token: str) -> None:
    """This tab is now the person holding `token`; later tabs and reloads find it in the cookie."""
    st.session_state["_room_token"] = token
    st.session_state["_room_set_cookie"] = True
    st.session_state.pop("_room_forgotten", None)


def forget() -> None:
    """This browser forgets who it was (the cookie is cleared on the next run)."""
    st.session_state.pop("_room_token", None)
    st.session_state["person"] = None
    st.session_state["_room_forgotten"] = True
    st.session_state["_room_clear_cookie"] = True


def personal_link(token: str) -> str:
    """The person's own link to the Workshop page."""
    return f"{base_url()}/workshop?me={token}"


def _write_cookie(token: str, max_age: int) -> None:
    # the token is URL-safe base64: nothing in it needs quoting
    st.html(f"<script>document.cookie = '{COOKIE}={token}; path=/; max-age={max_age}; SameSite=Strict';</script>",
            unsafe_allow_javascript=True, width=1)


def name_field(person: Person | None) -> None:
    """The sidebar's name: the joined person's (fixed), or, outside a workshop, a free label."""
    state = st.session_state
    if person is not None:
        state["user"] = person.name
        st.text_input("Your name", key="user", disabled=True,
                      help="You joined the workshop under this name; your runs carry it.")
        if person.is_instructor:
            st.caption(":material/school: Instructor")
    elif people.workshop_mode():
        state["user"] = ""
        st.caption("Join the workshop to launch runs.")
        st.page_link("app_pages/workshop.py", label="Join", icon=":material/login:")
    else:
        st.text_input("Your name", key="user", placeholder="shown next to your runs",
                      help="Shown next to the runs you launch, so a room sharing one GPU knows whose run is whose.")


def allowed(run: Run) -> bool:
    """Whether this browser may cancel or delete `run`; when not, say why on the page.
    Outside a workshop everyone may (one person, one lab)."""
    if not people.workshop_mode():
        return True
    why = people.refusal(st.session_state.get("person"), run)
    if why:
        st.error(why, icon=":material/block:")   # names hold no Markdown characters (people.clean_name)
    return why is None


def first_own(runs: list[Run], active_ids: list[int]) -> int | None:
    """The run the Runs page opens on for a joined person: their newest active run, else their newest."""
    person = st.session_state.get("person")
    own = [r.id for r in runs if person is not None and r.user == person.name]
    return next((i for i in own if i in active_ids), own[0] if own else None)


def base_url() -> str:
    """The room's public address (OPTLAB_PUBLIC_URL, set by `make workshop`) or the one this browser used."""
    import os
    from urllib.parse import urlsplit
    base = os.environ.get("OPTLAB_PUBLIC_URL", "").rstrip("/")
    if not base:
        url = urlsplit(st.context.url or "http://localhost:8501/")
        base = f"{url.scheme}://{url.netloc}"
    return base


def lesson_focus() -> None:
    """`?lesson=ID` (the Workshop page's "Open in the Lab"): the Lab shows that lesson's knobs only,
    until the person asks for all of them."""
    from optlab import lessons
    wanted = st.query_params.get("lesson")
    if wanted and st.session_state.get("_room_focus_from") != wanted:
        st.session_state["_room_focus_from"] = wanted
        found = {lesson.id: lesson for lesson in lessons.load()}.get(wanted)
        st.session_state["_room_focus"] = (found.title, list(found.knobs)) if found else None
    pinned = st.session_state["_room_pinned"] = room_focus()   # read once per run, not once per widget
    if pinned:
        st.caption(f"Lesson: {pinned[0]}. The instructor shows the settings this lesson is about; the others "
                   "keep their values.")
        return
    focus = st.session_state.get("_room_focus")
    if focus:
        title, knobs = focus
        left, right = st.columns([4, 1])
        left.caption(f"Lesson: {title}. The form shows the settings this lesson is about; the others keep "
                     "their values.")
        if right.button("Show every setting", key="room_unfocus"):
            st.session_state["_room_focus"] = None
            st.rerun()


def room_focus():
    """(lesson title, knobs) the instructor pinned for every participant's Lab, or None."""
    from optlab import fairuse, lessons
    person = st.session_state.get("person")
    if person is not None and person.is_instructor:
        return None
    pinned = fairuse.setting(Store(), "lab_focus")
    found = {lesson.id: lesson for lesson in lessons.load()}.get(pinned) if pinned else None
    return (found.title, list(found.knobs)) if found else None


def shown(name: str) -> bool:
    """Whether the Lab draws the widget for this setting: all of them, unless a lesson narrows them
    (the person's own choice, or the instructor's for the whole room)."""
    focus = st.session_state.get("_room_pinned") or st.session_state.get("_room_focus")
    return not focus or name in focus[1]


def shared_setup():
    """The RunConfig in this page's `?setup=` link, once per link (None otherwise, or when broken);
    also applies a lesson's focus (`?lesson=`)."""
    from optlab import share
    from optlab.config import ConfigError
    lesson_focus()
    text = st.query_params.get(share.PARAM)
    if not text or st.session_state.get("_room_setup") == text:
        return None
    st.session_state["_room_setup"] = text
    try:
        cfg = share.decode(text)
    except ConfigError as e:
        st.warning(f"The shared link's setup was not used: {e}", icon=":material/link_off:")
        return None
    st.info("The form holds the setup from the link you opened.", icon=":material/link:")
    return cfg


def share_link(values: dict) -> None:
    """A link that opens the Lab with the form as it is now."""
    from optlab import share, views
    from optlab.config import ConfigError
    with st.expander("Share this setup", icon=":material/share:"):
        try:
            st.code(share.link(base_url(), views.config_from_form(values)), language=None, wrap_lines=True)
            st.caption("Opening this link fills the Lab form with these settings.")
        except ConfigError as e:
            st.caption(f"Fix the form to get a link: {e}")
