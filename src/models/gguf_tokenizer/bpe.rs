//! Byte-level BPE as llama.cpp runs it on `gpt2` vocabularies: each pre-tokenized word is
//! written in GPT-2's byte alphabet, then adjacent symbols are merged, lowest merge rank first
//! (the leftmost pair among equals), while a merge applies.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// GPT-2's printable stand-in for each byte.
pub fn byte_char(b: u8) -> char {
    byte_table().0[b as usize]
}

/// The byte a GPT-2 byte-alphabet character stands for.
pub fn char_byte(c: char) -> Option<u8> {
    let back = &byte_table().1;
    back.get(c as usize).copied().flatten()
}

type ByteTable = ([char; 256], Vec<Option<u8>>);

fn byte_table() -> &'static ByteTable {
    static TABLE: std::sync::OnceLock<ByteTable> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let printable = |b: u8| matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let mut to = ['\0'; 256];
        let mut back = vec![None; 256 + 68];
        let mut next = 256u32;
        for b in 0..=255u8 {
            let cp = if printable(b) {
                u32::from(b)
            } else {
                next += 1;
                next - 1
            };
            let c = char::from_u32(cp).unwrap_or('\0');
            to[b as usize] = c;
            back[cp as usize] = Some(b);
        }
        (to, back)
    })
}

/// `tokenizer.ggml.merges`: each line is `left right`, split at the first space after the first
/// byte; a pair's rank is its first line.
pub struct Merges {
    /// The line, to its rank and where it splits.
    ranks: HashMap<Box<str>, (u32, u32)>,
}

impl Merges {
    pub fn new<'a>(lines: impl Iterator<Item = &'a str>) -> Merges {
        let mut ranks = HashMap::new();
        for (rank, line) in lines.enumerate() {
            // The first space after the first byte (a line may start with a space).
            let bytes = line.as_bytes();
            let Some(split) = (1..bytes.len()).find(|&i| bytes[i] == b' ') else {
                continue;
            };
            ranks
                .entry(Box::from(line))
                .or_insert((rank as u32, split as u32));
        }
        Merges { ranks }
    }

    fn rank(&self, key: &mut String, left: &str, right: &str) -> Option<u32> {
        key.clear();
        key.push_str(left);
        key.push(' ');
        key.push_str(right);
        match self.ranks.get(key.as_str()) {
            Some(&(rank, split)) if split as usize == left.len() => Some(rank),
            _ => None,
        }
    }
}

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

#[derive(PartialEq, Eq)]
struct Pair {
    rank: u32,
    left: usize,
    right: usize,
    len: usize,
}

impl Ord for Pair {
    /// The heap's greatest is the lowest rank, then the leftmost.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.rank, other.left).cmp(&(self.rank, self.left))
    }
}

impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One word's merge state, reused across words.
#[derive(Default)]
pub struct Session {
    symbols: Vec<Symbol>,
    heap: BinaryHeap<Pair>,
    key: String,
}

impl Session {
    /// Append the ids of `word` (already in the byte alphabet).
    pub fn word(
        &mut self,
        word: &str,
        ids: &HashMap<Box<str>, u32>,
        merges: &Merges,
        ignore_merges: bool,
        out: &mut Vec<u32>,
    ) {
        if ignore_merges {
            if let Some(&id) = ids.get(word) {
                out.push(id);
                return;
            }
        }
        self.symbols.clear();
        self.heap.clear();
        let n = word.chars().count();
        for (i, (start, c)) in word.char_indices().enumerate() {
            self.symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: (i + 1 < n).then_some(i + 1),
            });
        }
        for i in 1..self.symbols.len() {
            self.add_pair(word, merges, Some(i - 1), Some(i));
        }
        while let Some(pair) = self.heap.pop() {
            let (l, r) = (self.symbols[pair.left], self.symbols[pair.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != pair.len {
                continue;
            }
            self.symbols[pair.left].len += r.len;
            self.symbols[pair.left].next = r.next;
            self.symbols[pair.right].len = 0;
            if let Some(n) = r.next {
                self.symbols[n].prev = Some(pair.left);
            }
            self.add_pair(word, merges, l.prev, Some(pair.left));
            self.add_pair(word, merges, Some(pair.left), r.next);
        }
        for s in self.symbols.iter().filter(|s| s.len > 0) {
            let text = &word[s.start..s.start + s.len];
            match ids.get(text) {
                Some(&id) => out.push(id),
                // Not a token: llama.cpp looks each byte up as a one-byte token.
                None => {
                    for b in text.bytes().filter(u8::is_ascii) {
                        let mut buf = [0; 4];
                        if let Some(&id) = ids.get(char::from(b).encode_utf8(&mut buf) as &str) {
                            out.push(id);
                        }
                    }
                }
            }
        }
    }

    fn add_pair(&mut self, word: &str, merges: &Merges, left: Option<usize>, right: Option<usize>) {
        let (Some(left), Some(right)) = (left, right) else {
            return;
        };
        let (l, r) = (self.symbols[left], self.symbols[right]);
        let lt = &word[l.start..l.start + l.len];
        let rt = &word[r.start..r.start + r.len];
        if let Some(rank) = merges.rank(&mut self.key, lt, rt) {
            self.heap.push(Pair {
                rank,
                left,
                right,
                len: l.len + r.len,
            });
        }
    }
}

/// The bytes a byte-alphabet token stands for; a character outside the alphabet is written as
/// llama.cpp writes it, `[UNK_BYTE_0x..<token>]`.
pub fn token_bytes(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        match char_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                for b in c.encode_utf8(&mut [0; 4]).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_round_trips() {
        assert_eq!(byte_char(b' '), 'Ġ');
        assert_eq!(byte_char(b'\n'), 'Ċ');
        assert_eq!(byte_char(b'a'), 'a');
        for b in 0..=255u8 {
            assert_eq!(char_byte(byte_char(b)), Some(b));
        }
        assert_eq!(char_byte('€'), None);
    }

    #[test]
    fn merges_by_rank_then_leftmost() {
        let vocab = ["a", "b", "c", "ab", "bc", "abc", "Ġ", "Ġa"];
        let ids: HashMap<Box<str>, u32> = vocab
            .iter()
            .enumerate()
            .map(|(i, t)| (Box::from(*t), i as u32))
            .collect();
        // "b c" outranks "a b": "abc" -> a + bc; "ab c" is no merge.
        let merges = Merges::new(["b c", "a b", "Ġ a"].into_iter());
        let mut s = Session::default();
        let mut out = Vec::new();
        s.word("abc", &ids, &merges, false, &mut out);
        assert_eq!(out, [0, 4]);
        out.clear();
        s.word("Ġab", &ids, &merges, false, &mut out);
        assert_eq!(out, [6, 3]);
        // A whole-word token is taken as is only with ignore_merges.
        out.clear();
        s.word("abc", &ids, &merges, true, &mut out);
        assert_eq!(out, [5]);
    }
}
