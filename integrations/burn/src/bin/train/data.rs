//! The corpus: English-like text generated from a small grammar with a fixed seed, so that
//! every run trains on the same characters with no download. It has structure at several
//! ranges (spelling, agreement, clauses, counting) for a character model to learn.

/// A small deterministic generator (SplitMix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[self.below(words.len())]
    }
}

const NOUNS: [&str; 24] = [
    "cat", "dog", "river", "teacher", "engineer", "garden", "kernel", "window", "child", "farmer",
    "mountain", "city", "bird", "student", "painter", "ship", "forest", "lamp", "doctor", "horse",
    "village", "writer", "baker", "clock",
];
const VERBS: [(&str, &str); 16] = [
    ("sees", "see"),
    ("likes", "like"),
    ("follows", "follow"),
    ("finds", "find"),
    ("paints", "paint"),
    ("helps", "help"),
    ("watches", "watch"),
    ("carries", "carry"),
    ("remembers", "remember"),
    ("visits", "visit"),
    ("builds", "build"),
    ("calls", "call"),
    ("answers", "answer"),
    ("measures", "measure"),
    ("opens", "open"),
    ("keeps", "keep"),
];
const ADJECTIVES: [&str; 16] = [
    "old", "quiet", "bright", "small", "green", "tired", "clever", "heavy", "gentle", "cold",
    "young", "busy", "strange", "happy", "narrow", "warm",
];
const PLACES: [&str; 8] = [
    "near the river",
    "in the city",
    "after the rain",
    "before dawn",
    "at the market",
    "under the bridge",
    "in the old house",
    "by the sea",
];
const NUMBERS: [&str; 10] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];

fn plural(noun: &str) -> String {
    match noun {
        "child" => "children".into(),
        n if n.ends_with('h') => format!("{n}es"),
        n => format!("{n}s"),
    }
}

fn noun_phrase(rng: &mut Rng, plural_subject: bool) -> String {
    let noun = rng.pick(&NOUNS);
    let noun = if plural_subject {
        plural(noun)
    } else {
        noun.to_string()
    };
    match rng.below(3) {
        0 => format!("the {noun}"),
        1 => format!("the {} {noun}", rng.pick(&ADJECTIVES)),
        _ if plural_subject => format!("{} {noun}", rng.pick(&NUMBERS[2..])),
        _ => format!("a {} {noun}", rng.pick(&ADJECTIVES)),
    }
}

fn sentence(rng: &mut Rng) -> String {
    match rng.below(4) {
        // Counting: the model can learn the successor.
        0 => {
            let a = rng.below(9);
            format!(
                "{} comes before {}.",
                capitalize(NUMBERS[a]),
                NUMBERS[a + 1]
            )
        }
        _ => {
            let plural_subject = rng.below(2) == 0;
            let (singular, plural_verb) = VERBS[rng.below(VERBS.len())];
            let verb = if plural_subject {
                plural_verb
            } else {
                singular
            };
            let subject = noun_phrase(rng, plural_subject);
            let plural_object = rng.below(2) == 0;
            let object = noun_phrase(rng, plural_object);
            let place = if rng.below(2) == 0 {
                format!(" {}", rng.pick(&PLACES))
            } else {
                String::new()
            };
            let clause = if rng.below(3) == 0 {
                let (s, p) = VERBS[rng.below(VERBS.len())];
                let who = if plural_subject { p } else { s };
                format!(", and {who} {}", noun_phrase(rng, false))
            } else {
                String::new()
            };
            format!(
                "{}{} {verb} {object}{place}{clause}.",
                capitalize(&subject),
                ""
            )
        }
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// `bytes` of text (about), from `seed`.
pub fn corpus(seed: u64, bytes: usize) -> String {
    let mut rng = Rng::new(seed);
    let mut text = String::with_capacity(bytes + 256);
    while text.len() < bytes {
        text.push_str(&sentence(&mut rng));
        text.push(if rng.below(5) == 0 { '\n' } else { ' ' });
    }
    text
}

/// The text as token ids, and the vocabulary (sorted characters).
pub fn tokenize(text: &str) -> (Vec<u32>, Vec<char>) {
    let mut vocab: Vec<char> = text.chars().collect();
    vocab.sort_unstable();
    vocab.dedup();
    let ids = text
        .chars()
        .map(|c| vocab.binary_search(&c).expect("in the vocabulary") as u32)
        .collect();
    (ids, vocab)
}
