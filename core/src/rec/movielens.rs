//! MovieLens-100K → conversations in the Reddit-v2 schema: the built-in default data of the main
//! job (`convrec data movielens`, `docs/DOMAIN.md` "MovieLens-100K conversations").
//!
//! The input is RecBole's copy of MovieLens-100K (`ml-100k.item`, `ml-100k.inter`, as bytes); the
//! output is a catalog and train/validation/test rows that the rest of `rec` reads exactly like
//! Reddit-v2 rows. Per user, ratings are put in time order and cut into examples: the user message
//! is written from the user's well-rated movies before the cut (and their genres), the ground truth
//! is the next well-rated movies after it, `seen_titles` everything rated before it, and the
//! completion (the SFT target) lists the ground truth first and then popular movies the user has
//! not seen. Rows are split by time. Everything is a pure function of the input and the seed.

pub mod atomic;
pub mod titles;

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use serde::Serialize;

use self::atomic::AtomicFile;
use super::{Completion, GroundTruth, InputError, Message, Row};

/// The prompt wrapper of Reddit-v2, copied from the `prompt` field of the real rows; the
/// conversation follows it as `USER: <message>\n`.
pub const PROMPT_WRAPPER: &str = "Pretend you are a movie recommender system.\nI will give you a conversation between a user and you (a recommender system). Based on the conversation, you need to reply with 20 recommendations. List the standardized English title of each movie in each line in the form of \"movie name\" (release_year) with NO extra words or sentences.\nHere is the conversation: ";

/// How rows are made; [`Default`] is what `convrec data movielens` uses.
#[derive(Debug, Clone, PartialEq)]
pub struct MovieLensOptions {
    /// Seeds the user sample, the wording of each message and the order of the training rows.
    pub seed: u64,
    /// Use only this many users, a seeded sample (all when `None`).
    pub max_users: Option<usize>,
    /// A rating at or above this is "well rated" (liked).
    pub like_threshold: f64,
    /// A rating at or below this is mentioned as disliked.
    pub dislike_threshold: f64,
    /// Liked movies a user must have rated before the first cut.
    pub min_history: usize,
    /// Liked movies after a cut that form its ground truth; consecutive cuts are this far apart.
    pub groundtruth_len: usize,
    /// The most recent liked movies named in the user message.
    pub prompt_liked: usize,
    /// The most recent disliked movies named in the user message.
    pub prompt_disliked: usize,
    /// Lines in the completion.
    pub completion_len: usize,
    /// Fractions of rows (by time) for validation and test; the rest is train.
    pub validation_fraction: f64,
    pub test_fraction: f64,
}

impl Default for MovieLensOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            max_users: None,
            like_threshold: 4.0,
            dislike_threshold: 2.0,
            min_history: 5,
            groundtruth_len: 5,
            prompt_liked: 10,
            prompt_disliked: 3,
            completion_len: 20,
            validation_fraction: 0.1,
            test_fraction: 0.1,
        }
    }
}

/// A catalog movie. Several MovieLens ids can be one movie (MovieLens-100K lists 18 films twice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Movie {
    pub title: String,
    pub year: i64,
    pub genres: Vec<String>,
}

impl Movie {
    /// `Title (Year)`, the form of a completion line.
    pub fn line(&self) -> String {
        format!("{} ({})", self.title, self.year)
    }
}

/// One row with where it came from, for splitting and for checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub row: Row,
    pub user: String,
    /// The time of the liked rating the cut is placed before: everything in `seen_titles` was rated
    /// at or before it, the ground truth at or after it.
    pub cut_time: f64,
    /// The time of the last rating the row draws on (the end of its ground-truth window); the
    /// split is made on this, so no training row knows anything from the validation or test period.
    pub end_time: f64,
}

/// The built data set.
#[derive(Debug, Clone)]
pub struct MovieLensData {
    /// Distinct movies, sorted by title then year.
    pub movies: Vec<Movie>,
    pub train: Vec<Example>,
    pub validation: Vec<Example>,
    pub test: Vec<Example>,
    /// Rows in the item file and distinct users in the interaction file (before `max_users`).
    pub item_rows: usize,
    pub users: usize,
    /// Users the rows were made from (`max_users` applied).
    pub users_used: usize,
    /// Items left out of the catalog, as `id "raw title"`, and how many ratings that skipped.
    pub dropped_items: Vec<String>,
    pub dropped_ratings: usize,
    /// Rows with `end_time` below the first bound are train, below the second validation, the
    /// rest test (`None` without rows).
    pub split_bounds: Option<(f64, f64)>,
}

impl MovieLensData {
    /// The catalog as `title<TAB>year` lines after a header, the format [`super::Catalog`] reads.
    pub fn catalog_tsv(&self) -> String {
        let mut out = String::from("title\tyear\n");
        for m in &self.movies {
            out.push_str(&format!("{}\t{}\n", m.title, m.year));
        }
        out
    }
}

/// Builds the data set from the bytes of an `.item` and an `.inter` atomic file.
pub fn build(item: (&str, &str), inter: (&str, &str), options: &MovieLensOptions) -> Result<MovieLensData, InputError> {
    let items = AtomicFile::parse(item.0, item.1)?;
    let inters = AtomicFile::parse(inter.0, inter.1)?;
    let catalog = read_items(&items)?;
    let ratings = read_ratings(&inters, &catalog)?;

    let mut users: Vec<&str> = ratings.by_user.keys().copied().collect();
    users.sort_by(|a, b| user_order(a, b));
    let total_users = users.len();
    if let Some(n) = options.max_users {
        // A seeded sample, then back in id order so the rows do not depend on the draw order.
        let mut rng = SplitMix64::new(options.seed ^ 0x5553_4552_5321); // "USERS!"
        shuffle(&mut users, &mut rng);
        users.truncate(n);
        users.sort_by(|a, b| user_order(a, b));
    }

    let mut drafts: Vec<Draft> = Vec::new();
    for user in &users {
        let history = user_history(&ratings.by_user[user]);
        drafts.extend(cuts(user, &history, &catalog.movies, options));
    }

    // Split on the time each row ends: rows ending before `t1` are train, before `t2` validation.
    let mut ends: Vec<f64> = drafts.iter().map(|d| d.end_time).collect();
    ends.sort_by(f64::total_cmp);
    let bound = |fraction: f64| {
        let i = ((ends.len() as f64) * fraction).floor() as usize;
        ends.get(i.min(ends.len().saturating_sub(1))).copied()
    };
    let train_fraction = (1.0 - options.validation_fraction - options.test_fraction).max(0.0);
    let split_bounds = bound(train_fraction).zip(bound(1.0 - options.test_fraction));

    // The filler of every completion: movies by how often they were liked in the training period
    // only, so that no completion leaks what the validation or test period made popular.
    let t1 = split_bounds.map_or(f64::NEG_INFINITY, |b| b.0);
    let popular = popularity(&ratings.all, &catalog.movies, options.like_threshold, t1);

    let mut splits: [Vec<Example>; 3] = Default::default();
    for d in drafts {
        let which = match split_bounds {
            Some((t1, _)) if d.end_time < t1 => 0,
            Some((_, t2)) if d.end_time < t2 => 1,
            _ => 2,
        };
        splits[which].push(d.finish(&catalog.movies, &popular, options));
    }
    for split in &mut splits {
        split.sort_by(|a, b| a.end_time.total_cmp(&b.end_time).then_with(|| user_order(&a.user, &b.user)));
    }
    // Training rows in a seeded random order: SFT batches should not all come from one week.
    shuffle(&mut splits[0], &mut SplitMix64::new(options.seed ^ 0x5452_4149_4e21)); // "TRAIN!"
    let [train, validation, test] = splits;

    Ok(MovieLensData {
        movies: catalog.movies,
        train,
        validation,
        test,
        item_rows: items.records.len(),
        users: total_users,
        users_used: users.len(),
        dropped_items: catalog.dropped,
        dropped_ratings: ratings.dropped,
        split_bounds,
    })
}

/// The movies of the item file, deduplicated by `(title, year)`.
struct ItemCatalog {
    movies: Vec<Movie>,
    /// MovieLens item id → index in `movies`; `None` for a dropped item.
    by_id: HashMap<String, Option<usize>>,
    dropped: Vec<String>,
}

fn read_items(f: &AtomicFile) -> Result<ItemCatalog, InputError> {
    let (id_col, title_col, year_col) = (f.column("item_id")?, f.column("movie_title")?, f.column("release_year")?);
    // Genres are optional: without them the message just names no genres.
    let class_col = f.optional_column("class");
    let mut movies: Vec<Movie> = Vec::new();
    let mut index: HashMap<(String, i64), usize> = HashMap::new();
    let mut by_id = HashMap::new();
    let mut dropped = Vec::new();
    for r in &f.records {
        let id = f.token(r, id_col)?;
        if by_id.contains_key(id) {
            return Err(f.error(r, id_col, format!("{id:?} appears twice")));
        }
        let raw_title = &r.values[title_col];
        let Some((title, year)) = titles::title_and_year(raw_title, &r.values[year_col]) else {
            dropped.push(format!("{id} {raw_title:?}"));
            by_id.insert(id.to_string(), None);
            continue;
        };
        let genres: Vec<String> = class_col
            .map(|c| f.token_seq(r, c).into_iter().filter(|g| *g != "unknown").map(str::to_string).collect())
            .unwrap_or_default();
        let at = *index.entry((title.clone(), year)).or_insert_with(|| {
            movies.push(Movie { title, year, genres: Vec::new() });
            movies.len() - 1
        });
        for g in genres {
            if !movies[at].genres.contains(&g) {
                movies[at].genres.push(g);
            }
        }
        by_id.insert(id.to_string(), Some(at));
    }
    // Sorted for the catalog file; ids are remapped to the new positions.
    let mut order: Vec<usize> = (0..movies.len()).collect();
    order.sort_by(|&a, &b| movies[a].title.cmp(&movies[b].title).then(movies[a].year.cmp(&movies[b].year)));
    let mut new_pos = vec![0; movies.len()];
    for (new, &old) in order.iter().enumerate() {
        new_pos[old] = new;
    }
    let sorted = order.iter().map(|&i| movies[i].clone()).collect();
    for v in by_id.values_mut() {
        *v = v.map(|old| new_pos[old]);
    }
    Ok(ItemCatalog { movies: sorted, by_id, dropped })
}

#[derive(Debug, Clone, Copy)]
struct Rating {
    movie: usize,
    rating: f64,
    time: f64,
}

struct Ratings<'a> {
    by_user: HashMap<&'a str, Vec<Rating>>,
    all: Vec<Rating>,
    dropped: usize,
}

fn read_ratings<'a>(f: &'a AtomicFile, catalog: &ItemCatalog) -> Result<Ratings<'a>, InputError> {
    let cols = (f.column("user_id")?, f.column("item_id")?, f.column("rating")?, f.column("timestamp")?);
    let mut by_user: HashMap<&str, Vec<Rating>> = HashMap::new();
    let mut all = Vec::with_capacity(f.records.len());
    let mut dropped = 0;
    for r in &f.records {
        let user = f.token(r, cols.0)?;
        let item = f.token(r, cols.1)?;
        let rating = f.float(r, cols.2)?;
        let time = f.float(r, cols.3)?;
        let movie = catalog
            .by_id
            .get(item)
            .ok_or_else(|| f.error(r, cols.1, format!("{item:?} is not an item of the item file")))?;
        let Some(movie) = *movie else {
            dropped += 1;
            continue;
        };
        let rating = Rating { movie, rating, time };
        by_user.entry(user).or_default().push(rating);
        all.push(rating);
    }
    Ok(Ratings { by_user, all, dropped })
}

/// Numeric ids in numeric order, then anything else as text.
fn user_order(a: &str, b: &str) -> Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
        _ => a.cmp(b),
    }
}

/// One user's ratings in time order (ties by catalog order, so the order is total), each movie once
/// (its first rating: a second rating of the same film is not a new event).
fn user_history(ratings: &[Rating]) -> Vec<Rating> {
    let mut sorted = ratings.to_vec();
    sorted.sort_by(|a, b| a.time.total_cmp(&b.time).then(a.movie.cmp(&b.movie)));
    let mut seen = HashSet::new();
    sorted.retain(|r| seen.insert(r.movie));
    sorted
}

/// A row before its completion and wording are settled.
struct Draft {
    user: String,
    index: usize,
    cut_time: f64,
    end_time: f64,
    /// Movies rated before the cut, in time order.
    history: Vec<Rating>,
    groundtruth: Vec<usize>,
}

/// The cuts of one user: after `min_history` liked movies and then every `groundtruth_len` liked
/// movies, so ground-truth windows do not overlap.
fn cuts(user: &str, history: &[Rating], movies: &[Movie], o: &MovieLensOptions) -> Vec<Draft> {
    let liked: Vec<usize> = (0..history.len()).filter(|&i| history[i].rating >= o.like_threshold).collect();
    let step = o.groundtruth_len.max(1);
    let mut drafts = Vec::new();
    let mut c = o.min_history.max(1);
    while c < liked.len() {
        let at = liked[c];
        let window = &liked[c..(c + step).min(liked.len())];
        let before = &history[..at];
        let seen: HashSet<&str> = before.iter().map(|r| movies[r.movie].title.as_str()).collect();
        // A different film with a title the user has already rated (a remake) could never be
        // rewarded, because recommendations with seen titles do not count: leave it out.
        let groundtruth: Vec<usize> =
            window.iter().map(|&i| history[i].movie).filter(|&m| !seen.contains(movies[m].title.as_str())).collect();
        if !groundtruth.is_empty() {
            drafts.push(Draft {
                user: user.to_string(),
                index: drafts.len(),
                cut_time: history[at].time,
                end_time: history[*window.last().unwrap_or(&at)].time,
                history: before.to_vec(),
                groundtruth,
            });
        }
        c += step;
    }
    drafts
}

/// Every movie, most liked (in ratings before `before`) first; ties by title and year (the
/// catalog order), so the order is total.
fn popularity(all: &[Rating], movies: &[Movie], like: f64, before: f64) -> Vec<usize> {
    let mut count = vec![0usize; movies.len()];
    for r in all.iter().filter(|r| r.rating >= like && r.time < before) {
        count[r.movie] += 1;
    }
    let mut order: Vec<usize> = (0..movies.len()).collect();
    order.sort_by(|&a, &b| count[b].cmp(&count[a]).then(a.cmp(&b)));
    order
}

impl Draft {
    fn finish(self, movies: &[Movie], popular: &[usize], o: &MovieLensOptions) -> Example {
        let mut seen_titles: Vec<String> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for r in &self.history {
            let t = movies[r.movie].title.as_str();
            if seen.insert(t) {
                seen_titles.push(t.to_string());
            }
        }

        // Ground truth first, in the order the user came to it, then popular unseen films; a title
        // appears once (two films may share one).
        let mut used: HashSet<&str> = HashSet::new();
        let lines: Vec<String> = self
            .groundtruth
            .iter()
            .chain(popular.iter().filter(|&&m| !seen.contains(movies[m].title.as_str())))
            .filter(|&&m| used.insert(movies[m].title.as_str()))
            .take(o.completion_len)
            .map(|&m| movies[m].line())
            .collect();

        let mut rng = SplitMix64::new(o.seed ^ fnv1a(self.user.as_bytes()) ^ (self.index as u64).wrapping_mul(0x9E37));
        let message = user_message(&self.history, movies, o, &mut rng);
        let row = Row {
            sample_id: Some(format!("ml100k_u{}_{}", self.user, self.index)),
            prompt: vec![Message { role: "user".into(), content: format!("{PROMPT_WRAPPER}USER: {message}\n") }],
            completion: Some(Completion::Messages(vec![Message {
                role: "assistant".into(),
                content: lines.join("\n"),
            }])),
            seen_titles,
            groundtruth: self
                .groundtruth
                .iter()
                .map(|&m| GroundTruth::new(movies[m].title.clone(), movies[m].year.to_string()))
                .collect(),
        };
        Example { row, user: self.user, cut_time: self.cut_time, end_time: self.end_time }
    }
}

const OPENERS: [&str; 4] = [
    "I recently watched {} and really enjoyed them.",
    "Some movies I loved lately: {}.",
    "My recent favourites are {}.",
    "I've been on a movie streak and liked {}.",
];
const GENRE_LINES: [&str; 2] = [" I'm mostly into {} movies.", " I usually go for {}."];
const DISLIKE_LINES: [&str; 2] = [" I didn't care for {}.", " {} didn't work for me."];
const ASKS: [&str; 3] = [
    " What should I watch next?",
    " Can you recommend something similar that I haven't seen?",
    " Any suggestions for my next movie night?",
];

/// The user's turn: recent liked films, favourite genres, recent dislikes, a request; each sentence
/// in one of a few seeded wordings.
fn user_message(history: &[Rating], movies: &[Movie], o: &MovieLensOptions, rng: &mut SplitMix64) -> String {
    let recent = |keep: &dyn Fn(&Rating) -> bool, n: usize| -> Vec<String> {
        let picked: Vec<&Rating> = history.iter().rev().filter(|r| keep(r)).take(n).collect();
        picked.iter().rev().map(|r| movies[r.movie].line()).collect()
    };
    let liked = recent(&|r| r.rating >= o.like_threshold, o.prompt_liked);
    let disliked = recent(&|r| r.rating <= o.dislike_threshold, o.prompt_disliked);

    // The three genres the user liked most often before the cut; ties by name.
    let mut genre_count: HashMap<&str, usize> = HashMap::new();
    for r in history.iter().filter(|r| r.rating >= o.like_threshold) {
        for g in &movies[r.movie].genres {
            *genre_count.entry(g.as_str()).or_default() += 1;
        }
    }
    let mut genres: Vec<(&str, usize)> = genre_count.into_iter().collect();
    genres.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let genres: Vec<String> = genres.iter().take(3).map(|(g, _)| g.to_lowercase()).collect();

    let mut pick = |choices: &[&str], list: &[String]| choices[rng.below(choices.len())].replace("{}", &join(list));
    let mut message = pick(&OPENERS, &liked);
    if !genres.is_empty() {
        message += &pick(&GENRE_LINES, &genres);
    }
    if !disliked.is_empty() {
        message += &pick(&DISLIKE_LINES, &disliked);
    }
    message += ASKS[rng.below(ASKS.len())];
    message
}

/// `a`, `a and b`, `a, b and c`.
fn join(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// Rows as JSONL in the Reddit-v2 field order (`sample_id`, `prompt`, `completion`, `seen_titles`,
/// `groundtruth_with_release_year`); [`super::parse_dataset`] reads it back to the same rows.
pub fn to_jsonl<'a>(rows: impl IntoIterator<Item = &'a Row>) -> String {
    #[derive(Serialize)]
    struct JsonMessage<'a> {
        content: &'a str,
        role: &'a str,
    }
    #[derive(Serialize)]
    #[serde(untagged)]
    enum JsonCompletion<'a> {
        Text(&'a str),
        Messages(Vec<JsonMessage<'a>>),
    }
    #[derive(Serialize)]
    struct JsonRow<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        sample_id: Option<&'a str>,
        prompt: Vec<JsonMessage<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        completion: Option<JsonCompletion<'a>>,
        seen_titles: &'a [String],
        groundtruth_with_release_year: Vec<[&'a str; 2]>,
    }
    let messages = |ms: &'a [Message]| -> Vec<JsonMessage<'a>> {
        ms.iter().map(|m| JsonMessage { content: &m.content, role: &m.role }).collect()
    };
    let mut out = String::new();
    for row in rows {
        let json = JsonRow {
            sample_id: row.sample_id.as_deref(),
            prompt: messages(&row.prompt),
            completion: row.completion.as_ref().map(|c| match c {
                Completion::Text(t) => JsonCompletion::Text(t),
                Completion::Messages(ms) => JsonCompletion::Messages(messages(ms)),
            }),
            seen_titles: &row.seen_titles,
            groundtruth_with_release_year: row
                .groundtruth
                .iter()
                .map(|g| [g.title.as_str(), g.year.as_str()])
                .collect(),
        };
        // Serialising strings and lists cannot fail.
        out.push_str(&serde_json::to_string(&json).unwrap_or_default());
        out.push('\n');
    }
    out
}

/// SplitMix64: a fixed, documented generator, so that a seed gives the same files with any version
/// of any dependency (the `rand` crate reserves the right to change `StdRng`).
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`); the modulo bias is below 2^-40 for the small `n` used here.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Fisher–Yates.
fn shuffle<T>(items: &mut [T], rng: &mut SplitMix64) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i + 1));
    }
}

/// FNV-1a, to fold a user id into a row's seed.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests;
