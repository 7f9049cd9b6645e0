"""paths.py: what a path argument names, lexically. Table-driven; every row is a spelling an agent could send."""

from __future__ import annotations

import pytest

from mcp_gatekeeper.paths import glob_regex, interpretations, is_under, normalise, parent

HOME = "/home/me"


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("/home/me/work/src/../.git/hooks/pre-commit", "/home/me/work/.git/hooks/pre-commit"),
        ("/home/me/work/../.bashrc", "/home/me/.bashrc"),
        ("/w//src/./a.txt", "/w/src/a.txt"),
        ("/w/src/", "/w/src"),
        ("/../../etc/passwd", "/etc/passwd"),  # ".." at the root stays at the root
        ("/", "/"),
        ("~", "/home/me"),
        ("~/.ssh/id_rsa", "/home/me/.ssh/id_rsa"),
        ("~other/x", "~other/x"),  # another user's home is not guessed
        ("src/../../x", "../x"),  # a relative path keeps its climb
        ("./a/./b/..", "a"),
        ("", "."),
        (".", "."),
        ("C:/Users/me/../../../x", "C:/x"),
        ("/./a", "/a"),
        ("/../a", "/a"),
        ("a/.", "a"),
        ("./a", "a"),
        ("../a", "../a"),
        ("a/..", "."),
        ("/a/b", "/a/b"),
        ("a/.b/..c", "a/.b/..c"),  # names that begin with dots are names
        ("c:/", "C:/"),
    ],
)
def test_normalise(raw: str, normal: str) -> None:
    assert normalise(raw, home=HOME) == normal


@pytest.mark.parametrize(
    ("raw", "forms"),
    [
        ("/w/a", ("/w/a",)),
        ("file:///w/src/%2E%2E/.env", ("file:/w/src/%2E%2E/.env", "/w/.env")),
        ("file://localhost/w/a?x#y", ("file:/localhost/w/a?x#y", "/w/a")),
        ("FILE:///C:/Users/me/a", ("FILE:/C:/Users/me/a", "C:/Users/me/a")),
        ("file://evil.host/w/a", ("file:/evil.host/w/a", "/evil.host/w/a")),
        ("C:\\Users\\me\\..\\x", ("C:\\Users\\me\\..\\x", "C:/Users/x")),
        ("/w/src\\..\\..\\etc", ("/w/src\\..\\..\\etc", "/etc")),
        (' "/w/.env" ', (' "/w/.env" ', "/w/.env", ' "/w/.env"')),  # server-filesystem trims spaces and quotes
        ("/w/Donne\u0301es/a", ("/w/Donne\u0301es/a", "/w/Donn\u00e9es/a")),  # NFD also names the NFC file
        ("/w/Donn\u00e9es/a", ("/w/Donn\u00e9es/a",)),
        ("/proc/self/root/w/x/../a", ("/proc/self/root/w/a", "/w/a")),
        ("/x/../proc/1234/task/7/root", ("/proc/1234/task/7/root", "/")),
        ("/proc/thread-self/cwd/.local/a", ("/proc/thread-self/cwd/.local/a", ".local/a")),
        ("/dev/fd/3/a/./b", ("/dev/fd/3/a/b", "a/b")),
        ("/proc/self/rootless/a", ("/proc/self/rootless/a",)),
        ("/w/.aws./credentials", ("/w/.aws./credentials", "/w/.aws/credentials")),  # what Windows opens
        ("C:/w/a.pem::$DATA", ("C:/w/a.pem::$DATA", "C:/w/a.pem")),
        ("/w/src/..../x", ("/w/src/..../x", "/w/x")),  # dots only: read as the climb it may be
        ("/w/src/.. /x", ("/w/src/.. /x", "/w/x")),
        ("/w/src/. /x", ("/w/src/. /x", "/w/src/x")),
        ("/w/a b/c", ("/w/a b/c",)),
        (
            "/proc/self/root/w/Donne\u0301es",
            (
                "/proc/self/root/w/Donne\u0301es",
                "/proc/self/root/w/Donn\u00e9es",
                "/w/Donne\u0301es",
                "/w/Donn\u00e9es",
            ),
        ),
    ],
)
def test_interpretations_cover_every_reading(raw: str, forms: tuple[str, ...]) -> None:
    assert interpretations(raw, home=HOME) == forms


@pytest.mark.parametrize("value", [None, 5, ["/w/a"], {"path": "/w/a"}, "/w/a\x00.txt", True])
def test_what_cannot_be_a_path(value: object) -> None:
    assert interpretations(value, home=HOME) is None


@pytest.mark.parametrize(
    ("path", "root", "under"),
    [
        ("/w/src", "/w/src", True),
        ("/w/src/a/b", "/w/src", True),
        ("/w/srcx/a", "/w/src", False),  # a prefix of the name is not the folder
        ("/w/.git/hooks/pre-commit", "/w/src", False),
        ("/w", "/w/src", False),
        ("/anything", "/", True),
        ("rel/a", "/", False),
        ("src/a", "src", True),
        ("../src/a", "src", False),
        ("a", ".", True),
        ("../a", ".", False),
        ("/a", ".", False),
        ("src/a", "/w/src", False),  # relative and absolute never mix
        ("C:/Users/me/a", "C:/Users/me", True),
        ("C:/x", "C:/", True),
        ("/x", "C:/", False),
    ],
)
def test_is_under(path: str, root: str, under: bool) -> None:
    assert is_under(path, root) is under


@pytest.mark.parametrize(
    ("path", "folder"), [("/w/src/a.txt", "/w/src"), ("/a", "/"), ("a", "."), ("C:/a", "C:/"), ("a/b", "a")]
)
def test_parent(path: str, folder: str) -> None:
    assert parent(path) == folder


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/w/src/*", "/w/src/a.py", True),
        ("/w/src/*", "/w/src/deep/a.py", False),  # "*" stays inside one folder
        ("/w/src/**", "/w/src/deep/a.py", True),  # "**" crosses
        ("/w/**/a.py", "/w/a.py", True),
        ("/w/**/a.py", "/w/x/y/a.py", True),
        ("**/.env", ".env", True),
        ("**/.env", "/home/me/work/.env", True),
        ("**/.env", "/home/me/work/x.env", False),
        ("**/.env.*", "/w/.env.local", True),
        ("**/id_*", "/home/me/.ssh/id_ed25519", True),
        ("/w/?.py", "/w/a.py", True),
        ("/w/?.py", "/w//.py", False),
        ("/w[/]x", "/w/x", False),  # a class never matches "/"
        ("/w/[!a]*", "/w/b", True),
        ("/w/[!a]*", "/w/a", False),
        ("/w/[a", "/w/[a", True),  # an unclosed bracket is literal
        ("/w/a.py", "/w/aXpy", False),  # "." is literal
    ],
)
def test_path_glob(pattern: str, path: str, matches: bool) -> None:
    assert (glob_regex(pattern).match(path) is not None) is matches
