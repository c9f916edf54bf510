"""Trace formats tried and dropped while designing distill/tasks.py, kept so bench/RESULTS.md's
learnability numbers can be reproduced: `python bench/task_learnability.py task_variants:<name> '{...}'`.
Each generator returns (prompt, thinking, answer, level label, checker). Throwaway research code, not a
part of the package. mixG2 is the layout distill/tasks.py ships (which has 3-4 addends in search,
for a larger problem space); `distill:mix` runs the shipped generators themselves.
"""


def chain(rng):
    """The chain shipped before: k alternating additions, one per line ("k x+a=r"), k in 2, 4, 6, 8."""
    return chainK(rng, (2, 4, 6, 8))


def _walk(s, adds, n):
    out, x = [], s
    for i in range(n):
        x = (x + adds[i % 2]) % 10; out.append(x)
    return out

def searchB(rng):
    while True:
        lv = rng.choice([1, 2])
        s, adds = rng.randint(0, 9), [rng.randint(1, 5), rng.randint(1, 5)]
        xs = _walk(s, adds, 10)
        c = xs[rng.randint(5 * lv - 5, 5 * lv - 1)]
        first = next(i + 1 for i, x in enumerate(xs) if x == c)
        if 5 * lv - 4 <= first <= 5 * lv and c != s: break
    vals = [s] + xs[:first]
    lines = []
    for n in range(first + 1):
        x = vals[n]
        if n == first:
            lines.append(f"{n} {x}/{c} ok"); break
        lines.append(f"{n} {x}/{c} no {x}+{adds[n % 2]}={vals[n + 1]}")
    prompt = f"0 {s}/{c} ? {s}+{adds[0]}=?\n1 ?/{c} ? ?+{adds[1]}=?"
    return prompt, "\n".join(lines), str(first), f"s{lv}", lambda a, f=str(first): a.strip() == f

def mixB(rng):
    return (chain if rng.random() < 0.5 else searchB)(rng)


def searchC(rng):
    """chain-identical lines, count up, stop when r == c (c only in the prompt)."""
    while True:
        lv = rng.choice([1, 2])
        s, adds = rng.randint(0, 9), [rng.randint(1, 5), rng.randint(1, 5)]
        xs = _walk(s, adds, 10)
        c = xs[rng.randint(5 * lv - 5, 5 * lv - 1)]
        first = next(i + 1 for i, x in enumerate(xs) if x == c)
        if 5 * lv - 4 <= first <= 5 * lv: break
    vals = [s] + xs[:first]
    lines = [f"{n + 1} {vals[n]}+{adds[n % 2]}={vals[n + 1]}" for n in range(first)]
    prompt = f"until {c}:\n1 {s}+{adds[0]}=?\n2 ?+{adds[1]}=?"
    return prompt, "\n".join(lines), str(first), f"s{lv}", lambda a, f=str(first): a.strip() == f

def mixC(rng):
    return (chain if rng.random() < 0.5 else searchC)(rng)

def chainK(rng, ks=(1, 2, 3, 4, 5, 6, 7, 8)):
    return _chain_alternating(rng, ks, up=False)

def _chain_alternating(rng, ks, up):
    """k alternating additions, one per line; the line counter counts down (k..1) or up (1..k)."""
    k = rng.choice(ks); x = rng.randint(0, 9); ab = [rng.randint(1, 5), rng.randint(1, 5)]
    lines, v = [], x
    for i in range(k):
        r = (v + ab[i % 2]) % 10
        lines.append(f"{i + 1 if up else k - i} {v}+{ab[i % 2]}={r}"); v = r
    if up:
        prompt = f"{k} times:\n1 {x}+{ab[0]}=?\n2 ?+{ab[1]}=?"
    else:
        prompt = f"{k} {x}+{ab[0]}=?\n{k - 1} ?+{ab[1]}=?"
    return prompt, "\n".join(lines), str(v), f"c{k}", lambda a, f=str(v): a.strip() == f

def searchDown(rng):
    """searchC but the counter counts down from 10; answer = 11 - last counter (harness only)."""
    p, t, a, l, chk = searchC(rng)
    lines = t.split("\n")
    new = []
    for ln in lines:
        n, rest = ln.split(" ", 1)
        new.append(f"{10 - int(n)} {rest}")
    pl = p.split("\n")
    pl[1] = "9 " + pl[1].split(" ", 1)[1]; pl[2] = "8 " + pl[2].split(" ", 1)[1]
    return "\n".join(pl), "\n".join(new), a, l, chk

def chainUp(rng, ks=(1, 2, 3, 4, 5, 6, 7, 8)):
    return _chain_alternating(rng, ks, up=True)

def searchDownC(rng):
    p, t, a, l, chk = searchDown(rng)
    c = p.split(":")[0].split()[-1]
    t = "\n".join(ln + f"/{c}" for ln in t.split("\n"))
    pl = p.split("\n"); pl[1] += f"/{c}"; pl[2] += f"/{c}"
    return "\n".join(pl[1:]), t, a, l, chk

def mixDC(rng):
    return (chainK if rng.random() < 0.5 else searchDownC)(rng)

def mixD(rng):
    return (chainK if rng.random() < 0.5 else searchDown)(rng)

def searchX(rng):
    """find the start x (0..9): x + a1 + a2 (+ a3) = c; guess x = 0, 1, ... and check each."""
    return _search_target(rng, range(10))

def _search_target(rng, guesses):
    lv = rng.choice([1, 2])
    adds = [rng.randint(1, 5) for _ in range(lv + 1)]
    x = rng.randint(0, 9)
    c = (x + sum(adds)) % 10
    lines = []
    for v in guesses:
        parts, r = [f"{v} {v}"], v
        for a in adds:
            r = (r + a) % 10
            parts.append(f"+{a}={r}")
        ok = r == c
        lines.append("".join(parts) + f"/{c} " + ("ok" if ok else "no"))
        if ok: break
    prompt = "? ?" + "".join(f"+{a}=?" for a in adds) + f"/{c} ?"
    return prompt, "\n".join(lines), str(x), f"s{lv}", lambda s, f=str(x): s.strip() == f

def mixX(rng):
    return (chainK if rng.random() < 0.5 else searchX)(rng)

def searchXd(rng):
    """searchX, guesses counted down from 9."""
    return _search_target(rng, range(9, -1, -1))

def mixXd(rng):
    return (chainK if rng.random() < 0.5 else searchXd)(rng)


# --- with the problem stated in a sentence above the worksheet ---

def chainP(rng, ks=(2, 4, 6, 8)):
    k = rng.choice(ks); x = rng.randint(0, 9); ab = [rng.randint(1, 5), rng.randint(1, 5)]
    lines, v = [], x
    for i in range(k):
        r = (v + ab[i % 2]) % 10
        lines.append(f"{k - i} {v}+{ab[i % 2]}={r}"); v = r
    prompt = f"x = {x}; add {ab[0]}, then {ab[1]}, alternately, {k} times (mod 10)\n{k} {x}+{ab[0]}=?\n{k - 1} ?+{ab[1]}=?"
    return prompt, "\n".join(lines), str(v), f"c{k}", lambda a, f=str(v): a.strip() == f

def _search(rng, first_two):
    lv = rng.choice([1, 2, 2, 2])
    adds = [rng.randint(1, 5) for _ in range(lv + 2)]
    x = -sum(adds) % 10
    lines = []
    for v in range(10):
        r, parts = v, [f"{v} {v}"]
        for a in adds:
            r = (r + a) % 10; parts.append(f"+{a}={r}")
        lines.append("".join(parts) + (" ok" if r == 0 else " no"))
        if r == 0: break
    tail = "".join(f"+{a}=?" for a in adds) + " ?"
    lay = [f"0 0{tail}", f"1 1{tail}"] if first_two else [f"? ?{tail}"] * 2
    prompt = f"find x in 0..9 with x{''.join(f'+{a}' for a in adds)} = 0 (mod 10)\n" + "\n".join(lay)
    return prompt, "\n".join(lines), str(x), f"s{lv}", lambda s, f=str(x): s.strip() == f

def mixF_unknowns(rng):
    return chainP(rng) if rng.random() < 0.5 else _search(rng, False)

def mixF_first_guesses(rng):
    return chainP(rng) if rng.random() < 0.5 else _search(rng, True)


# --- rounds of additions, both families counting down (mixG2 shipped) ---

def _run(x, adds):
    out = []
    for a in adds:
        x = (x + a) % 10; out.append(x)
    return out

def chainR(rng):
    k = rng.choice([1, 2, 3, 4]); x = rng.randint(0, 9); adds = [rng.randint(1, 5) for _ in range(2)]
    lines, v = [], x
    for i in range(k):
        rs = _run(v, adds)
        lines.append(f"{k - i} {v}" + "".join(f"+{a}={r}" for a, r in zip(adds, rs))); v = rs[-1]
    tail = "".join(f"+{a}=?" for a in adds)
    prompt = f"{k} {x}{tail}\n{k - 1} ?{tail}"
    return prompt, "\n".join(lines), str(v), f"c{k}", lambda s, f=str(v): s.strip() == f

def searchR(rng, down=False):
    lv = rng.choice([1, 2]); adds = [rng.randint(1, 5) for _ in range(lv + 1)]
    x = -sum(adds) % 10
    lines = []
    for v in (range(9, -1, -1) if down else range(10)):
        rs = _run(v, adds)
        lines.append(f"{v} {v}" + "".join(f"+{a}={r}" for a, r in zip(adds, rs)) + (" ok" if rs[-1] == 0 else " no"))
        if rs[-1] == 0: break
    tail = "".join(f"+{a}=?" for a in adds) + " ?"
    prompt = f"? ?{tail}\n? ?{tail}"
    return prompt, "\n".join(lines), str(x), f"s{lv}", lambda s, f=str(x): s.strip() == f

def mixG1(rng):
    return chainR(rng) if rng.random() < 0.5 else searchR(rng)

def mixG2(rng):
    return chainR(rng) if rng.random() < 0.5 else searchR(rng, True)


# --- one line of running sums for chain ---


def _line(v, adds):
    rs = _run(v, adds)
    return f"{v}" + "".join(f"+{a}={r}" for a, r in zip(adds, rs)), rs[-1]

def sumH(rng):
    k = rng.choice([2, 4, 6, 8]); x = rng.randint(0, 9); adds = [rng.randint(1, 5) for _ in range(k)]
    line, r = _line(x, adds)
    prompt = f"x = {x}: add {', '.join(map(str, adds))} (mod 10)\n{x}" + "".join(f"+{a}=?" for a in adds)
    return prompt, line, str(r), f"c{k}", lambda s, f=str(r): s.strip() == f

def searchH(rng):
    lv = rng.choice([1, 2]); adds = [rng.randint(1, 5) for _ in range(lv + 2)]
    x = -sum(adds) % 10
    lines = []
    for v in range(10):
        line, r = _line(v, adds)
        lines.append(line + (" ok" if r == 0 else " no"))
        if r == 0: break
    lay = "?" + "".join(f"+{a}=?" for a in adds) + " ?"
    prompt = f"find x in 0..9 with x{''.join(f'+{a}' for a in adds)} = 0 (mod 10)\n{lay}"
    return prompt, "\n".join(lines), str(x), f"s{lv}", lambda s, f=str(x): s.strip() == f

def mixH(rng):
    return sumH(rng) if rng.random() < 0.5 else searchH(rng)


# --- recall: arbitrary facts "x then letter -> digit" (a permutation of 0..9 per letter), composed in chain's
# round layout, mixed into the shipped families (a third of the problems). Tried for issue 12 as knowledge that a
# small student holds less of; mixR5 has 5 letters (50 facts), mixR10 10 (100). bench/RESULTS.md, "recall".
def _recall(letters, table):
    def gen(rng):
        level, x = rng.choice([1, 2, 3]), rng.randint(0, 9)
        c, d, lines, v = rng.choice(letters), rng.choice(letters), [], x
        for i in range(level):
            a = table[c][v]; b = table[d][a]
            lines.append(f"{level - i} {v}{c}={a}{d}={b}"); v = b
        return (f"{level} {x}{c}=?{d}=?\n{level - 1} ?{c}=?{d}=?", "\n".join(lines), str(v), f"r{level}",
                lambda s, gold=str(v): s.strip() == gold)
    return gen


def _mix_recall(n_letters):
    import random

    import task_learnability
    letters = "abcdefghijlmpqrsuvwz"[:n_letters]
    facts = random.Random("recall-facts")
    recall = _recall(letters, {c: facts.sample(range(10), 10) for c in letters})
    shipped = task_learnability.distill_generator("mix")
    return lambda rng: recall(rng) if rng.random() < 0.34 else shipped(rng)


_MIXES = {}


def _mixed(n_letters):
    if n_letters not in _MIXES:  # one table and one shipped generator per process
        _MIXES[n_letters] = _mix_recall(n_letters)
    return _MIXES[n_letters]


def mixR5(rng):
    return _mixed(5)(rng)


def mixR10(rng):
    return _mixed(10)(rng)
