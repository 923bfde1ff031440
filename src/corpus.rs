//! The built-in corpus: simple English stories generated from a seed, so the default config
//! trains offline with no download. Templates combine characters, places, objects, actions,
//! feelings and short dialogue; every choice is drawn from one seeded stream, so the text (and
//! its SHA-256) is a pure function of (seed, size).

use crate::rng::{self, Stream};

/// Separates stories, as in TinyStories; it is the tokenizer's special token.
pub const EOT: &str = "<|endoftext|>";

const GIRLS: &[&str] = &[
    "Lily", "Mia", "Sara", "Anna", "Zoe", "Emma", "Lucy", "Ella", "Rosa", "Ivy", "Nina", "Maya", "Ruby",
    "Alice", "Grace", "Hana", "Lena", "Olive",
];
const BOYS: &[&str] = &[
    "Tom", "Ben", "Max", "Leo", "Sam", "Jack", "Tim", "Finn", "Noah", "Omar", "Hugo", "Eli", "Sid", "Ravi",
    "Theo", "Milo", "Jonah", "Kai",
];
const KINDS: &[&str] =
    &["girl", "boy", "cat", "dog", "rabbit", "bird", "bear", "fox", "mouse", "duck", "frog", "puppy"];
const ADJS: &[&str] = &[
    "little", "happy", "curious", "brave", "kind", "shy", "silly", "clever", "sleepy", "small", "gentle",
    "busy", "friendly", "quiet", "funny", "tiny", "proud", "careful",
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
    "zoo",
    "barn",
    "castle",
    "cave",
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
    ("scarf", "warm"),
    ("whistle", "silver"),
    ("crayon", "purple"),
    ("robot", "funny"),
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
    "in the sand",
    "behind the barn",
];
const FEELINGS_BAD: &[&str] = &["sad", "worried", "upset", "scared", "lonely", "grumpy"];
const FEELINGS_GOOD: &[&str] = &["happy", "glad", "proud", "excited", "thankful", "calm"];
const TIMES: &[&str] = &[
    "One day",
    "One morning",
    "One sunny day",
    "One rainy afternoon",
    "One evening",
    "Last summer",
    "On a windy day",
];
const WEATHER: &[&str] = &[
    "The sun was warm.",
    "The wind was blowing.",
    "It was raining a little.",
    "The sky was blue.",
    "There were clouds in the sky.",
    "It was a cold day.",
    "The birds were singing.",
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
    "played hide and seek",
    "danced in the grass",
];
const FAMILY: &[&str] = &["mom", "dad", "grandma", "grandpa", "big sister", "big brother", "aunt", "uncle"];
const FOODS: &[&str] = &["cookies", "soup", "bread", "pancakes", "a pie", "a cake", "muffins"];
const ANIMALS: &[&str] = &["bird", "kitten", "puppy", "duckling", "turtle", "squirrel", "hedgehog"];
const LESSONS: &[&str] = &[
    "that sharing makes everyone happy",
    "that it is good to ask for help",
    "that friends help each other",
    "to be careful with things they love",
    "that being kind is always right",
    "that it is brave to try again",
    "that working together is more fun",
    "to listen to the people who love them",
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

/// A character: name, kind and pronouns (subject, object, possessive).
struct Who {
    name: &'static str,
    kind: &'static str,
    he: &'static str,
    him: &'static str,
    his: &'static str,
}

fn character(rng: &mut Stream, not: &str) -> Who {
    let kind = *pick(rng, KINDS);
    let girl = match kind {
        "girl" => true,
        "boy" => false,
        _ => rng::below(rng, 2) == 0,
    };
    let names = if girl { GIRLS } else { BOYS };
    let mut name = *pick(rng, names);
    while name == not {
        name = *pick(rng, names);
    }
    let (he, him, his) = if girl { ("she", "her", "her") } else { ("he", "him", "his") };
    Who { name, kind, he, him, his }
}

fn a_an(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// One story from its own stream: an opening, one of six plots, and an ending.
fn story(rng: &mut Stream) -> String {
    let h = character(rng, "");
    let f = character(rng, h.name);
    let (name, fname) = (h.name, f.name);
    let (he, his, him) = (h.he, h.his, h.him);
    let (he_c, his_c) = (cap(he), cap(his));
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
    let food = *pick(rng, FOODS);
    let animal = *pick(rng, ANIMALS);
    let lesson = *pick(rng, LESSONS);
    let kind = h.kind;
    let mut s = Vec::new();
    match rng::below(rng, 4) {
        0 => s.push(format!("Once upon a time, there was {} {adj} {kind} named {name}.", a_an(adj))),
        1 => s.push(format!("{name} was {} {adj} {kind} who lived near the {place}.", a_an(adj))),
        2 => s.push(format!("There once was {} {adj} {kind}. {his_c} name was {name}.", a_an(adj))),
        _ => s.push(format!("In a small village lived {} {adj} {kind} called {name}.", a_an(adj))),
    }
    s.push(format!("{he_c} had {} {oadj} {obj}. {he_c} loved it very much.", a_an(oadj)));
    s.push(format!("{when}, {name} went to the {place} with {his} {obj}. {weather}"));
    match rng::below(rng, 6) {
        0 => {
            s.push(format!("{name} played and played. Then {he} looked down. The {obj} was gone!"));
            s.push(format!("{name} felt {bad}. \"Where is my {obj}?\" {he} said."));
            s.push(format!("A {} named {fname} saw {name}. \"Why are you {bad}?\" asked {fname}.", f.kind));
            s.push(format!("\"I lost my {oadj} {obj},\" said {name}. \"Can you help me find it?\""));
            s.push(format!("\"Yes, I will help you,\" said {fname}. They looked everywhere."));
            s.push(format!("At last {fname} found the {obj} {hide}. \"Here it is!\" {} said.", f.he));
            s.push(format!("{name} was so {good}. \"Thank you, {fname}!\" Then they {play} together."));
        }
        1 => {
            s.push(format!("At the {place}, {name} met a {} named {fname}. {fname} had no toys.", f.kind));
            s.push(format!("\"Do you want to play with my {obj}?\" asked {name}."));
            s.push(format!("\"Yes, please!\" said {fname}. {} was very {good}.", cap(f.he)));
            s.push(format!("They {play} all day. Later they walked to the {place2} and {play} again."));
            s.push(format!("When the sun went down, {name} went home to {his} {fam}."));
            s.push(format!("\"I made a new friend today,\" {he} said. {his_c} {fam} smiled."));
        }
        2 => {
            s.push(format!("{name} wanted to climb the big hill, but {he} was {bad}."));
            s.push(format!("\"I am too small,\" said {name}. {his_c} {fam} held {his} hand."));
            s.push(format!("\"You can do it,\" said {his} {fam}. \"Try one step at a time.\""));
            s.push(format!("So {name} tried. {he_c} fell once, but {he} got up and tried again."));
            s.push(format!(
                "At the top, {name} saw {} {oadj} {obj} {hide}. {he_c} was very {good}.",
                a_an(oadj)
            ));
            s.push(format!("{name} showed it to {fname}, and they {play} together."));
        }
        3 => {
            s.push(format!("After that, {name} went home. {his_c} {fam} said, \"Let us make {food}!\""));
            s.push(format!("{name} got the bowl and the spoon. {he_c} mixed and mixed."));
            s.push(format!("Oops! {name} spilled some flour on the floor. {he_c} felt {bad}."));
            s.push(format!("\"It is okay,\" said {his} {fam}. \"We can clean it up together.\""));
            s.push("Soon it was all ready. The kitchen smelled so good.".into());
            s.push(format!("{name} gave some to {fname}. \"Yum!\" said {fname}, and they both laughed."));
        }
        4 => {
            s.push(format!("Near the {place2}, {name} heard a small sound. It was a little {animal}."));
            s.push(format!("The {animal} had a hurt leg. It looked {bad} and cold."));
            s.push(format!("\"Do not be afraid,\" said {name} softly. {he_c} wrapped it in {his} {obj}."));
            s.push(format!("{name} ran to get {his} {fam}. Together they helped the {animal}."));
            s.push(format!("Every day {name} gave it food and water. Soon the {animal} was strong again."));
            s.push(format!(
                "When it was time, the {animal} went home, and {name} waved goodbye. {he_c} felt {good}."
            ));
        }
        _ => {
            s.push(format!("{fname} came to the {place} too. \"Let us have a race!\" said {fname}."));
            s.push(format!("\"Ready, set, go!\" They ran as fast as they could to the {place2}."));
            s.push(format!("{fname} was fast, but {name} tripped and fell. {he_c} was {bad}."));
            s.push(format!("{fname} stopped and came back. \"Are you okay?\" {} asked.", f.he));
            s.push(format!("{fname} helped {him} up, and they walked to the end together."));
            s.push(format!("\"We both win,\" said {name} with a smile. Then they {play}."));
        }
    }
    s.push(format!("That day, {name} learned {lesson}."));
    match rng::below(rng, 3) {
        0 => s.push("The end.".into()),
        1 => s.push(format!("And {name} and {his} {obj} were {good} forever.")),
        _ => {}
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
        for name in ["Lily", "Tom", "\"", " she ", " he ", "flour", "race"] {
            assert!(a.contains(name));
        }
    }
}
