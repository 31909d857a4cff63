//! SentencePiece-style BPE as llama.cpp runs it on `llama` vocabularies: start from the
//! characters, merge the adjacent pair whose union is the highest-scoring token (the leftmost
//! among equals) while any pair forms a token, then write what is left: a token per symbol, or
//! the symbol's bytes as `<0xNN>` tokens.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

struct Pair {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl Ord for Pair {
    /// The heap's greatest is the highest score, then the leftmost. Scores compare as llama.cpp
    /// compares them (`<`): equal or unordered scores fall to the position.
    fn cmp(&self, other: &Self) -> Ordering {
        if self.score < other.score {
            Ordering::Less
        } else if self.score > other.score {
            Ordering::Greater
        } else {
            other.left.cmp(&self.left)
        }
    }
}

impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Pair {}

/// What the merge needs of the vocabulary.
pub struct Vocab<'a> {
    pub ids: &'a HashMap<Box<str>, u32>,
    pub scores: &'a [f32],
    /// The token of each byte (`<0xNN>`, else the byte itself as a one-character token).
    pub bytes: &'a [Option<u32>; 256],
    /// Written for a byte that has no token.
    pub unk: Option<u32>,
}

/// Append the ids of `text` (spaces already written as `▁`).
pub fn tokenize(text: &str, vocab: &Vocab<'_>, out: &mut Vec<u32>) {
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    let n = text.chars().count();
    for (i, (start, c)) in text.char_indices().enumerate() {
        symbols.push(Symbol {
            start,
            len: c.len_utf8(),
            prev: i.checked_sub(1),
            next: (i + 1 < n).then_some(i + 1),
        });
    }
    let mut heap = BinaryHeap::new();
    let add = |symbols: &[Symbol], heap: &mut BinaryHeap<Pair>, l: Option<usize>, r| {
        let (Some(left), Some(right)) = (l, r) else {
            return;
        };
        let (a, b): (Symbol, Symbol) = (symbols[left], symbols[right]);
        let len = a.len + b.len;
        if let Some(&id) = vocab.ids.get(&text[a.start..a.start + len]) {
            let score = vocab.scores.get(id as usize).copied().unwrap_or(0.0);
            heap.push(Pair {
                score,
                left,
                right,
                len,
            });
        }
    };
    for i in 1..symbols.len() {
        add(&symbols, &mut heap, Some(i - 1), Some(i));
    }
    while let Some(pair) = heap.pop() {
        let (l, r) = (symbols[pair.left], symbols[pair.right]);
        // A pair one of whose symbols has changed since it was queued is stale.
        if l.len == 0 || r.len == 0 || l.len + r.len != pair.len {
            continue;
        }
        symbols[pair.left].len += r.len;
        symbols[pair.left].next = r.next;
        symbols[pair.right].len = 0;
        if let Some(n) = r.next {
            symbols[n].prev = Some(pair.left);
        }
        add(&symbols, &mut heap, l.prev, Some(pair.left));
        add(&symbols, &mut heap, Some(pair.left), r.next);
    }
    let mut at = (!symbols.is_empty()).then_some(0);
    while let Some(i) = at {
        let s = symbols[i];
        let piece = &text[s.start..s.start + s.len];
        match vocab.ids.get(piece) {
            Some(&id) => out.push(id),
            None => out.extend(
                piece
                    .bytes()
                    .filter_map(|b| vocab.bytes[b as usize].or(vocab.unk)),
            ),
        }
        at = s.next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Toy = (HashMap<Box<str>, u32>, Vec<f32>, [Option<u32>; 256]);

    fn toy() -> Toy {
        let vocab: &[(&str, f32)] = &[
            ("<unk>", 0.0),
            ("▁", -1.0),
            ("a", -2.0),
            ("b", -3.0),
            ("c", -4.0),
            ("ab", -5.0),
            ("bc", -1.5),
            ("▁a", -6.0),
            ("abc", -7.0),
            ("<0xC3>", 0.0),
            ("<0xA9>", 0.0),
        ];
        let ids = vocab
            .iter()
            .enumerate()
            .map(|(i, (t, _))| (Box::from(*t), i as u32))
            .collect();
        let scores = vocab.iter().map(|(_, s)| *s).collect();
        let mut bytes = [None; 256];
        bytes[0xC3] = Some(9);
        bytes[0xA9] = Some(10);
        (ids, scores, bytes)
    }

    fn run(text: &str) -> Vec<u32> {
        let (ids, scores, bytes) = toy();
        let vocab = Vocab {
            ids: &ids,
            scores: &scores,
            bytes: &bytes,
            unk: Some(0),
        };
        let mut out = Vec::new();
        tokenize(text, &vocab, &mut out);
        out
    }

    #[test]
    fn merges_by_score_not_by_position() {
        // "bc" (-1.5) beats "ab" (-5): a + bc, and "abc" is never reached (a+bc is a pair whose
        // union "abc" scores -7, still a token, so it merges last).
        assert_eq!(run("abc"), [8]);
        // Without "c": a + b -> "ab".
        assert_eq!(run("ab"), [5]);
        // "▁a" (-6) vs "ab" (-5): ab first, then "▁" + "ab" is no token.
        assert_eq!(run("▁ab"), [1, 5]);
    }

    #[test]
    fn ties_go_to_the_leftmost_pair() {
        // "aa" is no token; in "abab" both "ab" pairs score the same: left first, same result.
        assert_eq!(run("abab"), [5, 5]);
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes() {
        // é is C3 A9; ü (C3 BC) has only its first byte: the second becomes <unk>.
        assert_eq!(run("aé"), [2, 9, 10]);
        assert_eq!(run("ü"), [9, 0]);
    }
}
