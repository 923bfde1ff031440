//! The built-in corpus: simple English stories generated from a seed, so the default config
//! trains offline with no download. Templates combine characters, places, objects, actions,
//! feelings and short dialogue; every choice is drawn from one seeded stream, so the text (and
//! its SHA-256) is a pure function of (seed, size).

use crate::rng::{self, Stream};

/// Separates stories, as in TinyStories; it is the tokenizer's special token.
pub const EOT: &str = "<|endoftext|>";

const NAMES: &[&str] = &[
    "Lily", "Tom", "Mia", "Ben", "Sara", "Max", "Anna", "Leo", "Zoe", "Sam", "Emma", "Jack", "Lucy", "Tim",
    "Ella", "Finn", "Rosa", "Noah", "Ivy", "Omar", "Nina", "Hugo", "Maya", "Eli",
];
const KINDS: &[(&str, &str)] = &[
    ("girl", "she"),
    ("boy", "he"),
    ("girl", "she"),
    ("boy", "he"),
    ("cat", "it"),
    ("dog", "it"),
    ("rabbit", "it"),
    ("bird", "it"),
    ("bear", "it"),
    ("fox", "it"),
];
const ADJS: &[&str] = &[
    "little", "happy", "curious", "brave", "kind", "shy", "silly", "clever", "sleepy", "small", "gentle",
    "busy", "friendly", "quiet",
];
const PLACES: &[&str] = &[
    "park",
    "forest",
    "garden",
    "beach",
    "farm",
    "school",
    "kitchen",
    "river",
    "hill",
    "library",
    "market",
    "pond",
    "meadow",
    "village",
    "lake",
    "playground",
];
const OBJECTS: &[(&str, &str)] = &[
    ("ball", "red"),
    ("kite", "blue"),
    ("hat", "yellow"),
    ("book", "old"),
    ("box", "big"),
    ("toy car", "shiny"),
    ("teddy bear", "soft"),
    ("cake", "sweet"),
    ("flower", "pretty"),
    ("shell", "pink"),
    ("key", "golden"),
    ("boat", "wooden"),
    ("drum", "loud"),
    ("apple", "green"),
    ("map", "strange"),
    ("lamp", "bright"),
    ("sock", "striped"),
    ("cup", "tiny"),
];
const HIDING: &[&str] = &[
    "under a big rock",
    "behind a tree",
    "in a tall bush",
    "under the bed",
    "next to the door",
    "in a hole",
    "on a high branch",
    "inside an old boot",
    "under some leaves",
    "by the fence",
];
const FEELINGS_BAD: &[&str] = &["sad", "worried", "upset", "scared", "lonely"];
const FEELINGS_GOOD: &[&str] = &["happy", "glad", "proud", "excited", "thankful"];
const TIMES: &[&str] =
    &["One day", "One morning", "One sunny day", "One rainy afternoon", "One evening", "Last summer"];
const WEATHER: &[&str] = &[
    "The sun was warm.",
    "The wind was blowing.",
    "It was raining a little.",
    "The sky was blue.",
    "There were clouds in the sky.",
    "It was a cold day.",
];
const PLAYS: &[&str] = &[
    "played tag",
    "sang a song",
    "built a sand castle",
    "ran in circles",
    "shared a snack",
    "drew pictures",
    "jumped in puddles",
    "read a story",
    "had a picnic",
];
const FAMILY: &[&str] = &["mom", "dad", "grandma", "grandpa", "big sister", "big brother"];
const LESSONS: &[&str] = &[
    "that sharing makes everyone happy",
    "that it is good to ask for help",
    "that friends help each other",
    "to be careful with things they love",
    "that being kind is always right",
    "that it is brave to try again",
];

fn pick<'a, T>(rng: &mut Stream, xs: &'a [T]) -> &'a T {
    &xs[rng::below(rng, xs.len() as u64) as usize]
}

fn cap(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// One story from its own stream.
fn story(rng: &mut Stream) -> String {
    let hero = *pick(rng, NAMES);
    let mut friend = *pick(rng, NAMES);
    while friend == hero {
        friend = *pick(rng, NAMES);
    }
    let (kind, pron) = *pick(rng, KINDS);
    let (fkind, fpron) = *pick(rng, KINDS);
    let adj = *pick(rng, ADJS);
    let place = *pick(rng, PLACES);
    let place2 = *pick(rng, PLACES);
    let (obj, oadj) = *pick(rng, OBJECTS);
    let hide = *pick(rng, HIDING);
    let bad = *pick(rng, FEELINGS_BAD);
    let good = *pick(rng, FEELINGS_GOOD);
    let when = *pick(rng, TIMES);
    let weather = *pick(rng, WEATHER);
    let play = *pick(rng, PLAYS);
    let fam = *pick(rng, FAMILY);
    let lesson = *pick(rng, LESSONS);
    let poss = match pron {
        "she" => "her",
        "he" => "his",
        _ => "its",
    };
    let article = if adj.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    let mut s = Vec::new();
    match rng::below(rng, 3) {
        0 => s.push(format!("Once upon a time, there was {article} {adj} {kind} named {hero}.")),
        1 => s.push(format!("{hero} was {article} {adj} {kind} who lived near the {place}.")),
        _ => s.push(format!("There once was {article} {adj} {kind}. {} name was {hero}.", cap(poss))),
    }
    s.push(format!("{} had a {oadj} {obj}. {} loved it very much.", cap(pron), cap(pron)));
    s.push(format!("{when}, {hero} went to the {place} with {poss} {obj}. {weather}"));
    match rng::below(rng, 3) {
        0 => {
            s.push(format!("{hero} played and played. Then {pron} looked down. The {obj} was gone!"));
            s.push(format!("{hero} felt {bad}. \"Where is my {obj}?\" {pron} said."));
            s.push(format!("A {fkind} named {friend} saw {hero}. \"Why are you {bad}?\" asked {friend}."));
            s.push(format!("\"I lost my {oadj} {obj},\" said {hero}. \"Can you help me find it?\""));
            s.push(format!("\"Yes, I will help you,\" said {friend}. They looked everywhere."));
            s.push(format!("At last {friend} found the {obj} {hide}. \"Here it is!\" {fpron} said."));
            s.push(format!("{hero} was so {good}. \"Thank you, {friend}!\" Then they {play} together."));
        }
        1 => {
            s.push(format!("At the {place}, {hero} met a {fkind} named {friend}. {friend} had no toys."));
            s.push(format!("\"Do you want to play with my {obj}?\" asked {hero}."));
            s.push(format!("\"Yes, please!\" said {friend}. {} was very {good}.", cap(fpron)));
            s.push(format!("They {play} all day. Later they walked to the {place2} and {play} again."));
            s.push(format!("When the sun went down, {hero} went home to {poss} {fam}."));
            s.push(format!("\"I made a new friend today,\" {pron} said. {} {fam} smiled.", cap(poss)));
        }
        _ => {
            s.push(format!("{hero} wanted to climb the {place2} hill, but {pron} was {bad}."));
            s.push(format!("\"I am too small,\" said {hero}. {} {fam} held {poss} hand.", cap(poss)));
            s.push(format!("\"You can do it,\" said {} {fam}. \"Try one step at a time.\"", poss));
            s.push(format!("So {hero} tried. {} fell once, but {pron} got up and tried again.", cap(pron)));
            s.push(format!("At the top, {hero} saw a {oadj} {obj} {hide}. {} was very {good}.", cap(pron)));
            s.push(format!("{hero} showed it to {friend}, and they {play} together."));
        }
    }
    s.push(format!("That day, {hero} learned {lesson}."));
    if rng::below(rng, 2) == 0 {
        s.push("The end.".into());
    }
    s.join(" ")
}

/// Whole stories, separated by `<|endoftext|>` lines, until at least `bytes` bytes.
pub fn generate(seed: u64, bytes: u64) -> String {
    let mut out = String::with_capacity(bytes as usize + 1024);
    let mut i = 0u64;
    while (out.len() as u64) < bytes {
        let mut rng = rng::stream(seed, "corpus-story", &i.to_string());
        out.push_str(&story(&mut rng));
        out.push('\n');
        out.push_str(EOT);
        out.push('\n');
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_varied() {
        let a = generate(0, 50_000);
        assert_eq!(a, generate(0, 50_000));
        assert_ne!(a, generate(1, 50_000));
        assert!(a.len() >= 50_000);
        let stories: Vec<&str> = a.split(EOT).filter(|s| !s.trim().is_empty()).collect();
        let distinct: std::collections::BTreeSet<&str> = stories.iter().copied().collect();
        assert!(distinct.len() * 10 >= stories.len() * 9, "stories repeat too often");
        for name in ["Lily", "Tom", "\""] {
            assert!(a.contains(name));
        }
    }
}
