//! The dashboard's HTML: overview (with its live part), job list, job page and gallery.
//!
//! Plain `format!` templates. Everything that came from a user or from Ark passes through
//! [`esc`] on its way into the page, attribute values included; ids and numbers we produced
//! ourselves are escaped too, so no call site has to decide what is safe.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Deserialize;

use super::Ui;
use crate::bulk::estimate::{self, GenTimes};
use crate::job::JobState;
use crate::stage::limiter::Limiter;
use crate::store::{HELD, Job, StoreError, Timestamp, UiCell, UiFilter, now_ms};
use crate::tier::Tier;

/// Rows of the job list per page.
pub const PAGE: u32 = 50;
/// Chains shown on the overview.
const CHAINS: u32 = 20;
/// Finished batches shown on the overview, newest first, after those with work left.
const RECENT_BATCHES: u32 = 5;
/// Jobs shown in one gallery.
const GALLERY: u32 = 500;

/// HTML-escapes text for element content and quoted attribute values. Newlines become
/// character references, so a fragment can travel as one server-sent event line.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query parameter value.
fn qp(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A unix-ms time as `YYYY-MM-DD HH:MM:SS` UTC.
fn at(t: Timestamp) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.ms()) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))
            .ok()
        })
        .unwrap_or_else(|| t.ms().to_string())
}

/// A token count in human units: `950`, `103.8 k`, `2.5 M`, `250 G`.
pub fn human_tokens(n: i64) -> String {
    let units = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    let v = n as f64;
    for (size, unit) in units {
        if v.abs() >= size {
            let x = v / size;
            // One decimal, without a trailing `.0`.
            let t = format!("{x:.1}");
            let t = t.strip_suffix(".0").unwrap_or(&t);
            return format!("{t} {unit}");
        }
    }
    n.to_string()
}

/// A duration in words: `45 s`, `12 min`, `3 h 12 min`, `2 d 5 h`.
pub fn human_dur(ms: i64) -> String {
    let s = (ms.max(0) + 999) / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => match (s % 3600) / 60 {
            0 => format!("{} h", s / 3600),
            m => format!("{} h {m} min", s / 3600),
        },
        _ => match (s % 86_400) / 3600 {
            0 => format!("{} d", s / 86_400),
            h => format!("{} d {h} h", s / 86_400),
        },
    }
}

/// Whole fen as yuan: `¥4.88`.
pub fn yuan_fen(fen: i64) -> String {
    format!("¥{}.{:02}", fen.div_euclid(100), fen.rem_euclid(100))
}

/// Hold units (`store::budget::UNITS_PER_FEN` a fen) as yuan, rounded up to the fen.
pub fn yuan_units(units: i64) -> String {
    let per = crate::store::budget::UNITS_PER_FEN;
    yuan_fen((units + per - 1).div_euclid(per))
}

/// A unix-ms time as `HH:MM` at UTC+`offset_hours`, with the offset: `00:00 +08:00`.
fn clock(t: Timestamp, offset_hours: i32) -> String {
    let local = (t.ms() + i64::from(offset_hours) * 3_600_000).rem_euclid(86_400_000) / 60_000;
    let sign = if offset_hours < 0 { '-' } else { '+' };
    format!(
        "{:02}:{:02} {sign}{:02}:00",
        local / 60,
        local % 60,
        offset_hours.abs()
    )
}

/// The prompt of a frozen request: its text item (Ark's `content[].text`).
pub fn prompt(request_json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(request_json).unwrap_or_default();
    v["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["type"] == "text")
        .filter_map(|c| c["text"].as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t} · seedq</title><link rel=\"stylesheet\" href=\"/ui/style.css\">\
         <script src=\"/ui/app.js\" defer></script></head>\n<body>\
         <nav><a href=\"/ui\" class=\"brand\">seedq</a> <a href=\"/ui\">Overview</a> \
         <a href=\"/ui/jobs\">Jobs</a> <a href=\"/ui/keys\">Keys</a></nav>\n<main>\n{body}\n</main></body></html>\n",
        t = esc(title)
    )
}

fn state_badge(s: JobState) -> String {
    format!("<span class=\"st st-{s}\">{s}</span>", s = esc(s.as_str()))
}

/// Price of `tokens` of `model` (CNY), when the catalogue knows the model.
fn cost(ui: &Ui, model: &str, tier: Tier, tokens: i64) -> Option<f64> {
    let cat = ui.ctx.ops.live.catalogue();
    cat.get(model)
        .map(|spec| crate::catalogue::cost(spec, tokens, tier.is_flex()))
}

/// A model's or batch's paused badge, and (actions on) its Pause or Resume button.
fn pause_control(ui: &Ui, paused: &BTreeSet<(String, String)>, kind: &str, name: &str) -> String {
    let is = paused.contains(&(kind.to_string(), name.to_string()));
    let mut out = String::new();
    if is {
        out.push_str(" <span class=\"badge paused\" data-k=\"paused\">paused</span>");
    }
    if ui.actions_on() {
        let (op, label) = if is {
            ("resume", "Resume")
        } else {
            ("pause", "Pause")
        };
        let _ = write!(
            out,
            " <button type=\"button\" class=\"small\" data-op=\"{op}\" data-kind=\"{kind}\" \
             data-name=\"{n}\">{label}</button>",
            n = esc(name),
        );
    }
    out
}

/// The overview page: the live part (also sent by `/ui/events`) in a shell.
///
/// # Errors
/// The store cannot be read.
pub async fn overview(ui: &Ui) -> Result<String, StoreError> {
    let live = live(ui).await?;
    Ok(page(
        "Overview",
        &format!(
            "<h1>Overview</h1><p class=\"muted\">Live: updated by server-sent events \
             <span id=\"live-status\">connecting…</span></p>\
             {pause}<div id=\"live\" data-src=\"/ui/events\">{live}</div>",
            // Pause/resume buttons sit in the live part; the token field stays outside it so
            // an update does not clear what was typed.
            pause = if ui.actions_on() {
                "<section class=\"pause-actions\"><label>admin token (pause / resume) \
                 <input type=\"password\" id=\"ov-token\" autocomplete=\"off\"></label> \
                 <output id=\"ov-result\"></output></section>"
            } else {
                ""
            }
        ),
    ))
}

/// The live part of the overview: limits per model and tier, batches, chains.
///
/// # Errors
/// The store cannot be read.
pub async fn live(ui: &Ui) -> Result<String, StoreError> {
    let ctx = &ui.ctx;
    let store = &ctx.store;
    let now = now_ms();
    let day = crate::stage::day_start_ms(now, ctx.cfg.dispatch.tpd_utc_offset_hours);
    let waiting = store.ui_waiting().await?;
    let flex_today = store.ui_flex_today(Timestamp::from_ms(day)).await?;
    let creates = store
        .ui_creates_since(Timestamp::from_ms(now - 60_000))
        .await?;
    let oldest = store.ui_oldest_queued().await?;
    let waits = store.ui_waits(now).await?;
    let paused: BTreeSet<(String, String)> = store
        .paused()
        .await?
        .into_iter()
        .map(|p| (p.kind, p.name))
        .collect();
    let mut out = String::new();

    // Limits per (model, tier), as Ark applies them: the default tier has slots and RPM, flex
    // only its daily tokens plus the account's optional (or learned) ceilings. Every pair with
    // unfinished jobs, and every pair that created a task in the last minute.
    let mut pairs: BTreeSet<(&str, Tier)> = waiting
        .iter()
        .map(|(_, m, t, _)| (m.as_str(), *t))
        .collect();
    for (m, t) in creates.keys() {
        pairs.insert((m.as_str(), *t));
    }
    out.push_str(
        "<section><h2>Models</h2><table id=\"models\"><thead><tr><th>model</th><th>tier</th>\
         <th>in flight / limit</th><th>creates last min / RPM</th>\
         <th>flex tokens today / TPD</th><th>queued</th><th>oldest queued</th></tr></thead><tbody>",
    );
    if pairs.is_empty() {
        out.push_str(
            "<tr><td colspan=\"7\" class=\"muted\">nothing in the queue or in flight</td></tr>",
        );
    }
    for (model, tier) in &pairs {
        let limits = ctx.ops.live.limits(model);
        let sum = |f: &dyn Fn(JobState) -> bool, t: Option<Tier>| -> i64 {
            waiting
                .iter()
                .filter(|(s, m, rt, _)| m == model && t.is_none_or(|t| *rt == t) && f(*s))
                .map(|r| r.3)
                .sum()
        };
        let in_flight = sum(&|s| s.is_remote(), Some(*tier));
        let opt = |v: Option<u32>| v.map_or("–".to_string(), |v| v.to_string());
        let (slots, rpm) = if tier.is_flex() {
            (
                opt(limits
                    .flex_max_in_flight
                    .or_else(|| ctx.limiter.flex_ceiling(model))),
                opt(limits.flex_rpm),
            )
        } else {
            (limits.concurrency.to_string(), limits.rpm.to_string())
        };
        let queued = sum(&|s| s == JobState::Queued, Some(*tier));
        let tpd = if tier.is_flex() {
            let used = flex_today.get(*model).copied().unwrap_or(0);
            match limits.flex_tpd {
                Some(l) => format!(
                    "{} / {}",
                    human_tokens(used),
                    human_tokens(i64::try_from(l).unwrap_or(i64::MAX))
                ),
                None => format!("{} / –", human_tokens(used)),
            }
        } else {
            "–".to_string()
        };
        let old = oldest
            .get(&(model.to_string(), *tier))
            .map_or("–".to_string(), |t| format!("{} ago", human_dur(now - t)));
        let _ = write!(
            out,
            "<tr data-model=\"{m}\" data-tier=\"{t}\"><td>{m}{un}{pz}</td><td>{t}</td>\
             <td class=\"num\" data-k=\"inflight\">{in_flight} / {c}</td>\
             <td class=\"num\">{cr} / {rpm}</td><td class=\"num\" data-k=\"tpd\">{tpd}</td>\
             <td class=\"num\" data-k=\"queued\">{queued}</td><td>{old}</td></tr>",
            m = esc(model),
            t = esc(tier.as_str()),
            // A model without a price: under a spend cap its jobs wait instead of being created.
            un = if ctx.ops.live.catalogue().get(model).is_none() {
                format!(
                    " <span class=\"muted\" data-k=\"unpriced\" title=\"{}\">unpriced</span>",
                    esc(&crate::worker::budget::unpriced_reason(model))
                )
            } else {
                String::new()
            },
            pz = pause_control(ui, &paused, "model", model),
            c = slots,
            cr = creates
                .get(&(model.to_string(), *tier))
                .copied()
                .unwrap_or(0),
            tpd = esc(&tpd),
        );
    }
    out.push_str("</tbody></table></section>");

    // Batches with work left, then the newest finished ones.
    let archiving = ctx.archive.is_some();
    let names = store.ui_batch_names(archiving, RECENT_BATCHES).await?;
    out.push_str("<section><h2>Batches</h2>");
    if names.is_empty() {
        out.push_str("<p class=\"muted\">no batches</p>");
    }
    let mut times = GenTimes::new(store, &ctx.cfg.poll);
    for name in &names {
        let cs = store.ui_batch_cells(name).await?;
        let mut per_state: BTreeMap<JobState, i64> = BTreeMap::new();
        let mut cny = 0.0;
        for c in &cs {
            *per_state.entry(c.state).or_default() += c.jobs;
            cny += cost(ui, &c.model, c.tier, c.usage_tokens).unwrap_or(0.0);
        }
        let total: i64 = per_state.values().sum();
        let done_state = |s: JobState| {
            if archiving {
                s == JobState::Archived
            } else {
                s == JobState::Succeeded || s == JobState::Archived
            }
        };
        let done: i64 = per_state
            .iter()
            .filter(|(s, _)| done_state(**s))
            .map(|(_, n)| n)
            .sum();
        let finished: i64 = per_state
            .iter()
            .filter(|(s, _)| s.is_terminal() || (**s == JobState::Succeeded && !archiving))
            .map(|(_, n)| n)
            .sum();
        let why = batch_waits(ui, Some(name), &cs, &waits, &paused, now).await?;
        let left = total - finished;
        let eta = match eta(ui, &mut times, &cs).await? {
            _ if finished == total => "done".to_string(),
            // Every job left is held until someone acts: no time would be true.
            _ if why.held >= left => "held (see below)".to_string(),
            Some(ms) => {
                let ms = why.until.map_or(ms, |u| ms.max(u.ms() - now));
                let mut e = format!("eta {}", human_dur(ms));
                if why.held > 0 {
                    let _ = write!(e, " for the rest; {} held", why.held);
                }
                e
            }
            None => "eta ?".to_string(),
        };
        let _ = write!(
            out,
            "<div class=\"batch\" data-batch=\"{n}\"><h3><a href=\"/ui/jobs?batch={nq}\">{n}</a> \
             <a class=\"small\" href=\"/ui/gallery?batch={nq}\">gallery</a>{pz}</h3>\
             <progress max=\"{total}\" value=\"{done}\"></progress> \
             <span class=\"num\" data-k=\"done\">{done} / {total}</span> · \
             <span data-k=\"cost\">¥{cny:.2}</span> · <span data-k=\"eta\">{eta}</span>{w}<ul class=\"counts\">",
            w = why.html(),
            n = esc(name),
            nq = esc(&qp(name)),
            eta = esc(&eta),
            pz = pause_control(ui, &paused, "batch", name),
        );
        for (s, n) in &per_state {
            let _ = write!(
                out,
                "<li data-state=\"{s}\">{badge} <span class=\"num\">{n}</span></li>",
                s = esc(s.as_str()),
                badge = state_badge(*s),
            );
        }
        out.push_str("</ul></div>");
    }
    out.push_str("</section>");

    // Jobs outside batches (most of those created through the doors) that wait, and why.
    if waits.iter().any(|w| w.batch.is_none()) {
        let why = batch_waits(ui, None, &[], &waits, &paused, now).await?;
        if !why.lines.is_empty() {
            let _ = write!(
                out,
                "<section id=\"unbatched\"><h2>Waiting outside batches</h2>{}</section>",
                why.html()
            );
        }
    }

    // Chains and their shots.
    let chains = store.chains(CHAINS).await?;
    out.push_str("<section><h2>Chains</h2>");
    if chains.is_empty() {
        out.push_str("<p class=\"muted\">no chains</p>");
    }
    for ch in &chains {
        let shots = store.chain_shots(&ch.id).await?;
        let _ = write!(
            out,
            "<div class=\"chain\"><h3>{id} <span class=\"st\">{st}</span> \
             <a class=\"small\" href=\"/ui/gallery?chain={idq}\">gallery</a></h3><ol class=\"shots\">",
            id = esc(&ch.id),
            idq = esc(&qp(&ch.id)),
            st = esc(ch.state.as_str()),
        );
        for s in &shots {
            let held = s.job.next_attempt_at == HELD && s.job.state == JobState::Queued;
            let _ = write!(
                out,
                "<li><a href=\"/ui/jobs/{id}\">shot {n}</a> {badge}{held}</li>",
                id = esc(s.job.id.as_str()),
                n = s.shot,
                badge = state_badge(s.job.state),
                held = if held {
                    " <span class=\"muted\">held</span>"
                } else {
                    ""
                },
            );
        }
        out.push_str("</ol></div>");
    }
    out.push_str("</section>");
    Ok(out)
}

/// Why a batch's queued jobs wait, in words with numbers.
#[derive(Debug, Default)]
struct Why {
    /// One line per reason (HTML, escaped), with its code for `data-wait`.
    lines: Vec<(&'static str, String)>,
    /// Jobs held until someone acts (a batch cap, no price, a pause).
    held: i64,
    /// The latest time a timed wait (a daily cap, a TPD day, a backoff) ends.
    until: Option<Timestamp>,
}

impl Why {
    fn html(&self) -> String {
        if self.lines.is_empty() {
            return String::new();
        }
        let mut out = String::from("<ul class=\"waits\" data-k=\"waits\">");
        for (code, line) in &self.lines {
            let _ = write!(out, "<li data-wait=\"{code}\">{line}</li>");
        }
        out.push_str("</ul>");
        out
    }
}

/// `1 job waits`, `3 jobs wait`.
fn jobs_wait(n: i64) -> String {
    if n == 1 {
        "1 job waits".to_string()
    } else {
        format!("{n} jobs wait")
    }
}

/// The wait reasons of batch `name`: pauses (from the `paused` table) and the codes the
/// dispatcher records on a job it puts back (`store::budget::WAIT_*`, a flex TPD day's end as
/// the due time, a retry's backoff).
async fn batch_waits(
    ui: &Ui,
    name: Option<&str>,
    cells: &[UiCell],
    waits: &[crate::store::UiWait],
    paused: &BTreeSet<(String, String)>,
    now: i64,
) -> Result<Why, StoreError> {
    use crate::store::budget::{WAIT_BATCH, WAIT_DAILY, WAIT_UNPRICED};
    let ctx = &ui.ctx;
    let mut why = Why::default();
    let queued = |model: Option<&str>| -> i64 {
        cells
            .iter()
            .filter(|c| c.state == JobState::Queued && model.is_none_or(|m| c.model == m))
            .map(|c| c.jobs)
            .sum()
    };
    if let Some(name) = name
        && paused.contains(&("batch".to_string(), name.to_string()))
    {
        let n = queued(None);
        why.held += n;
        why.lines.push((
            "paused",
            format!(
                "paused: {} for <code>seedq resume --batch {}</code>",
                jobs_wait(n),
                esc(name)
            ),
        ));
        return Ok(why);
    }
    let models: BTreeSet<&str> = cells.iter().map(|c| c.model.as_str()).collect();
    for m in models {
        if paused.contains(&("model".to_string(), m.to_string())) && queued(Some(m)) > 0 {
            let n = queued(Some(m));
            why.held += n;
            why.lines.push((
                "paused",
                format!(
                    "paused: model {} is paused; {} for <code>seedq resume --model {}</code>",
                    esc(m),
                    jobs_wait(n),
                    esc(m)
                ),
            ));
        }
    }
    // Daily caps, one line per cap however many (model, key) groups wait on it:
    // label → (spent and cap, or the recorded refusal; jobs; when the day ends).
    let mut daily: BTreeMap<String, (String, i64, Timestamp)> = BTreeMap::new();
    let mut keys: Option<BTreeMap<String, (crate::store::ApiKey, i64)>> = None;
    for w in waits.iter().filter(|w| w.batch.as_deref() == name) {
        if paused.contains(&("model".to_string(), w.model.clone())) {
            continue;
        }
        let n = jobs_wait(w.jobs);
        let left = human_dur(w.next_at.ms() - now);
        match w.code.as_deref() {
            Some(WAIT_BATCH) => {
                why.held += w.jobs;
                // Only a batch's jobs have a batch cap.
                let Some(name) = name else { continue };
                let s = ctx.store.batch_spend(name).await?;
                let mut caps = Vec::new();
                if let Some(fen) = s.max_cost_fen {
                    caps.push(format!(
                        "{} of {} spent",
                        yuan_units(s.units),
                        yuan_fen(fen)
                    ));
                }
                if let Some(t) = s.max_tokens {
                    caps.push(format!(
                        "{} of {} tokens",
                        human_tokens(s.tokens),
                        human_tokens(t)
                    ));
                }
                let flag = if s.max_cost_fen.is_some() {
                    "--max-cost"
                } else {
                    "--max-tokens"
                };
                why.lines.push((
                    "budget_batch",
                    format!(
                        "held by the batch cap: {}; {}: {n} for <code>seedq batch set {} \
                         {flag} …</code>",
                        esc(&caps.join(", ")),
                        esc(&w.model),
                        esc(name)
                    ),
                ));
            }
            Some(WAIT_UNPRICED) => {
                why.held += w.jobs;
                why.lines.push((
                    "budget_unpriced",
                    format!(
                        "model {} has no price under a cap: {n} for a price in config.toml \
                         (then a reload)",
                        esc(&w.model)
                    ),
                ));
            }
            Some(WAIT_DAILY) => {
                why.until = why.until.max(Some(w.next_at));
                let msg = w.message.as_deref().unwrap_or("");
                let day = crate::worker::budget::day_start(
                    now,
                    ctx.ops.live.tz(),
                    ctx.cfg.bulk.tpd_day_ms(),
                );
                let (label, spent) = if msg.contains("budget.daily_cny") {
                    let cap = ctx
                        .ops
                        .live
                        .budget()
                        .daily_cny
                        .and_then(|v| crate::config::fen_of_cny(v).ok());
                    let (units, _) = ctx.store.day_spend(day, None).await?;
                    ("the daily cap (budget.daily_cny)".to_string(), (units, cap))
                } else if msg.contains("API key") {
                    // The cap of the key that created the jobs (`seedq keys create
                    // --max-cost-per-day`), and what its jobs hold today.
                    if keys.is_none() {
                        let usage: BTreeMap<String, i64> = ctx
                            .store
                            .api_key_usage(day)
                            .await?
                            .into_iter()
                            .map(|u| (u.key, u.units_today))
                            .collect();
                        keys = Some(
                            ctx.store
                                .api_keys()
                                .await?
                                .into_iter()
                                .map(|k| {
                                    let units = usage.get(&k.id).copied().unwrap_or(0);
                                    (k.id.clone(), (k, units))
                                })
                                .collect(),
                        );
                    }
                    match w
                        .api_key
                        .as_ref()
                        .and_then(|id| keys.as_ref().and_then(|m| m.get(id)))
                    {
                        Some((k, units)) => (
                            format!("the daily cap of API key {}", k.name),
                            (*units, k.max_cost_fen),
                        ),
                        None => ("an API key's daily cap".to_string(), (-1, None)),
                    }
                } else {
                    let cap = ctx
                        .ops
                        .live
                        .catalogue()
                        .get(&w.model)
                        .and_then(|s| s.daily_cny)
                        .and_then(|v| crate::config::fen_of_cny(v).ok());
                    let (_, units) = ctx.store.day_spend(day, Some(w.model.clone())).await?;
                    (format!("{}'s daily cap", w.model), (units, cap))
                };
                let numbers = match spent {
                    (units, Some(cap)) if units >= 0 => {
                        format!("{} of {} spent", yuan_units(units), yuan_fen(cap))
                    }
                    // Unknown now: what the refusal recorded.
                    _ => msg.to_string(),
                };
                let e = daily.entry(label).or_insert((numbers, 0, w.next_at));
                e.1 += w.jobs;
                e.2 = e.2.max(w.next_at);
            }
            // A flex job due at the next TPD day's start: seedq's own TPD count (which keeps the
            // last error) or Ark's TPD refusal (whose 429 code it records) closed the day.
            _ if w.tier.is_flex()
                && w.next_at.ms()
                    >= crate::stage::tpd_day_start(
                        now,
                        ctx.cfg.dispatch.tpd_utc_offset_hours,
                        ctx.cfg.bulk.tpd_day_ms(),
                    ) + ctx.cfg.bulk.tpd_day_ms() =>
            {
                why.until = why.until.max(Some(w.next_at));
                why.lines.push((
                    "flex_tpd",
                    format!(
                        "{}: {n} for the next TPD day: the flex daily tokens are spent \
                         (resets {}, in {left})",
                        esc(&w.model),
                        esc(&clock(w.next_at, ctx.cfg.dispatch.tpd_utc_offset_hours))
                    ),
                ));
            }
            code => {
                why.until = why.until.max(Some(w.next_at));
                let after = code.map_or(String::new(), |c| format!(" after {}", esc(c)));
                why.lines.push((
                    "retry",
                    format!("{}: {n} to retry{after}, in {left}", esc(&w.model)),
                ));
            }
        }
    }
    let tz = ctx.ops.live.tz();
    for (label, (numbers, jobs, next_at)) in daily {
        why.lines.push((
            "budget_daily",
            format!(
                "held by {}: {}; {} for the next budget day (starts 00:00 {}, in {})",
                esc(&label),
                esc(&numbers),
                jobs_wait(jobs),
                esc(&tz.to_string()),
                human_dur(next_at.ms() - now)
            ),
        ));
    }
    Ok(why)
}

/// Time to finish a batch's remaining jobs, from the same planner `seedq watch` uses: the
/// learned generation times of their model, tier and shape at their models' limits.
async fn eta(
    ui: &Ui,
    times: &mut GenTimes<'_>,
    cells: &[UiCell],
) -> Result<Option<i64>, StoreError> {
    let mut per_model: BTreeMap<&str, (i64, i64, i64)> = BTreeMap::new();
    for c in cells {
        let remaining = times
            .remaining(c.state, &c.model, c.tier, c.shape.as_deref())
            .await?;
        let Some(gen_ms) = remaining else {
            continue;
        };
        let m = per_model.entry(c.model.as_str()).or_default();
        m.0 += c.jobs;
        m.1 += gen_ms * c.jobs;
        m.2 = m.2.max(gen_ms);
    }
    if per_model.is_empty() {
        return Ok(None);
    }
    let day = ui.ctx.cfg.bulk.tpd_day_ms();
    Ok(per_model
        .into_iter()
        .map(|(model, (n, sum, max))| {
            let limits = Limiter::limits(&ui.ctx.catalogue, model);
            estimate::finish_ms(n, sum, max, &limits, 0, day).0
        })
        .max())
}

/// The job list's query string.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ListQuery {
    pub state: Option<String>,
    pub model: Option<String>,
    pub batch: Option<String>,
    pub tag: Option<String>,
    pub q: Option<String>,
    pub before: Option<String>,
}

fn nonempty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// The job list: filters, one page, a link to the next.
///
/// # Errors
/// A bad filter (the message names it) or a store failure.
pub async fn jobs(ui: &Ui, q: ListQuery) -> Result<String, String> {
    let state = match nonempty(q.state.clone()) {
        None => None,
        Some(s) => Some(s.parse::<JobState>().map_err(|_| {
            let allowed: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
            format!(
                "state: {s:?} is not a job state (allowed: {})\n",
                allowed.join(", ")
            )
        })?),
    };
    let f = UiFilter {
        state,
        model: nonempty(q.model.clone()),
        batch: nonempty(q.batch.clone()),
        tag: nonempty(q.tag.clone()),
        text: nonempty(q.q.clone()),
        before: nonempty(q.before.clone()),
        limit: PAGE + 1,
    };
    let mut rows = ui
        .ctx
        .store
        .ui_jobs(f)
        .await
        .map_err(|e| format!("cannot read the job store: {e}\n"))?;
    let more = rows.len() > PAGE as usize;
    rows.truncate(PAGE as usize);

    let v = |o: &Option<String>| esc(o.as_deref().unwrap_or(""));
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>Jobs</h1><form class=\"filters\" method=\"get\" action=\"/ui/jobs\">\
         <label>state <select name=\"state\"><option value=\"\">any</option>",
    );
    for s in JobState::ALL {
        let sel = if state == Some(s) { " selected" } else { "" };
        let _ = write!(body, "<option{sel}>{s}</option>", s = esc(s.as_str()));
    }
    let _ = write!(
        body,
        "</select></label> <label>model <input name=\"model\" value=\"{m}\"></label> \
         <label>batch <input name=\"batch\" value=\"{b}\"></label> \
         <label>tag <input name=\"tag\" value=\"{t}\"></label> \
         <label>prompt contains <input name=\"q\" value=\"{qq}\"></label> \
         <button type=\"submit\">Filter</button></form>\
         <table id=\"jobs\"><thead><tr><th>id</th><th>created</th><th>state</th><th>model</th>\
         <th>tier</th><th>batch</th><th>prompt</th></tr></thead><tbody>",
        m = v(&q.model),
        b = v(&q.batch),
        t = v(&q.tag),
        qq = v(&q.q),
    );
    if rows.is_empty() {
        body.push_str("<tr><td colspan=\"7\" class=\"muted\">no jobs match</td></tr>");
    }
    for j in &rows {
        let p = prompt(&j.request_json);
        let short: String = p.chars().take(120).collect();
        let _ = write!(
            body,
            "<tr><td><a href=\"/ui/jobs/{id}\">{id}</a></td><td>{c}</td><td>{st}</td>\
             <td>{m}</td><td>{t}</td><td>{b}</td><td class=\"prompt\">{p}</td></tr>",
            id = esc(j.id.as_str()),
            c = esc(&at(j.created_at)),
            st = state_badge(j.state),
            m = esc(&j.model),
            t = esc(j.service_tier.as_str()),
            b = esc(j.batch_id.as_deref().unwrap_or("")),
            p = esc(&short),
        );
    }
    body.push_str("</tbody></table>");
    if more && let Some(last) = rows.last() {
        let mut link = String::from("/ui/jobs?");
        for (k, val) in [
            ("state", &q.state),
            ("model", &q.model),
            ("batch", &q.batch),
            ("tag", &q.tag),
            ("q", &q.q),
        ] {
            if let Some(x) = val.as_deref().filter(|x| !x.is_empty()) {
                let _ = write!(link, "{k}={}&", qp(x));
            }
        }
        let _ = write!(link, "before={}", qp(last.id.as_str()));
        let _ = write!(
            body,
            "<p><a id=\"next\" href=\"{l}\">next page →</a></p>",
            l = esc(&link)
        );
    }
    Ok(page("Jobs", &body))
}

fn opt_ms(v: Option<Timestamp>) -> String {
    v.map_or("–".to_string(), at)
}

/// One job: what was asked, what happened, what came out.
///
/// # Errors
/// The store cannot be read.
pub async fn job(ui: &Ui, id: &str) -> Result<Option<String>, StoreError> {
    let Some(j) = ui.ctx.store.job(id).await? else {
        return Ok(None);
    };
    let events = ui.ctx.store.events(id).await?;
    let mut b = String::new();
    let jid = esc(j.id.as_str());
    let _ = write!(
        b,
        "<h1>Job <code>{jid}</code> {badge}</h1><p class=\"prompt-full\" id=\"prompt\">{p}</p>",
        badge = state_badge(j.state),
        p = esc(&prompt(&j.request_json)),
    );
    // The video first: for a video pipeline the product is the video.
    if j.archive_key.is_some() && ui.blob.is_some() {
        // A last frame exists only when the request asked for one (return_last_frame).
        let has_frame = ui.ctx.store.frame_digest(id).await?.is_some();
        let (poster, frame) = if has_frame {
            (
                format!(" poster=\"/ui/jobs/{jid}/frame\""),
                format!(
                    "<img id=\"last-frame\" src=\"/ui/jobs/{jid}/frame\" alt=\"last frame\">\
                     <figcaption>last frame · "
                ),
            )
        } else {
            (String::new(), "<figcaption>".to_string())
        };
        let _ = write!(
            b,
            "<section class=\"media\"><video id=\"video\" controls preload=\"metadata\" \
             src=\"/ui/jobs/{jid}/video\"{poster}></video><figure>{frame}\
             <a href=\"/ui/jobs/{jid}/sidecar\">sidecar JSON</a> · \
             <a href=\"/ui/jobs/{jid}/video\" download>download MP4</a></figcaption></figure></section>"
        );
    } else {
        b.push_str("<p class=\"muted\">No archived video (yet).</p>");
    }
    // Only the buttons whose verb can work on the job's state: the store's own rules
    // (`Store::cancel`, `Store::retry`, `seedq adopt`), so none of them can only fail.
    let parked =
        j.state == JobState::SubmitUnknown && j.last_error_code.as_deref() == Some("parked");
    let can_cancel = j.state == JobState::Queued || parked || j.state.is_remote();
    let can_retry = ((j.state.is_terminal() && j.state.can_transition(JobState::Queued)) || parked)
        && j.next_attempt_at != HELD;
    // Only an ambiguous create can adopt a task (the same rule as `seedq adopt`).
    let can_adopt = j.state == JobState::SubmitUnknown;
    if ui.actions_on() && (can_cancel || can_retry || can_adopt) {
        let _ = write!(
            b,
            "<section class=\"actions\" data-job=\"{jid}\"><label>admin token \
             <input type=\"password\" id=\"token\" autocomplete=\"off\"></label> \
             {cancel}{retry}{adopt}<output id=\"action-result\"></output></section>",
            cancel = if can_cancel {
                "<button type=\"button\" data-action=\"cancel\">Cancel</button> "
            } else {
                ""
            },
            retry = if can_retry {
                "<button type=\"button\" data-action=\"retry\">Retry</button> "
            } else {
                ""
            },
            adopt = if can_adopt {
                "<label>TASK_ID <input type=\"text\" id=\"adopt-task\" autocomplete=\"off\" \
                 placeholder=\"cgt-…\"></label> \
                 <button type=\"button\" data-action=\"adopt\">Adopt</button> "
            } else {
                ""
            }
        );
    } else if ui.actions_on() {
        let _ = write!(
            b,
            "<p class=\"muted\" id=\"no-actions\">No actions: the job is {} \
             (nothing to cancel or retry).</p>",
            esc(j.state.as_str())
        );
    } else {
        b.push_str(
            "<p class=\"muted\" id=\"read-only\">Read-only: set <code>admin.token</code> to turn on \
             cancel, retry and adopt.</p>",
        );
    }
    let tokens = j.usage_tokens.or(j.est_tokens).unwrap_or(0);
    let cny = cost(ui, &j.model, j.service_tier, tokens)
        .map_or("unpriced".to_string(), |c| format!("¥{c:.4}"));
    let rows: Vec<(&str, String)> = vec![
        ("model", j.model.clone()),
        ("tier", j.service_tier.to_string()),
        ("priority", j.priority.to_string()),
        ("batch", j.batch_id.clone().unwrap_or_default()),
        ("tags", j.tags.join(", ")),
        (
            "idempotency key",
            j.idempotency_key.clone().unwrap_or_default(),
        ),
        ("shape", j.shape.clone().unwrap_or_default()),
        ("seed", j.seed.map(|s| s.to_string()).unwrap_or_default()),
        ("created", at(j.created_at)),
        ("submitted", opt_ms(j.submitted_at)),
        ("finished", opt_ms(j.finished_at)),
        ("attempts", j.attempts.to_string()),
        ("remote task", j.remote_task_id.clone().unwrap_or_default()),
        ("remote status", j.remote_status.clone().unwrap_or_default()),
        ("polls", j.poll_count.to_string()),
        ("error code", j.last_error_code.clone().unwrap_or_default()),
        (
            "error message",
            j.last_error_message.clone().unwrap_or_default(),
        ),
        (
            "tokens",
            format!(
                "{} used · {} estimated",
                j.usage_tokens.map_or("–".into(), |t| t.to_string()),
                j.est_tokens.map_or("–".into(), |t| t.to_string())
            ),
        ),
        ("cost", cny),
        ("archive key", j.archive_key.clone().unwrap_or_default()),
        (
            "archive sha256",
            j.archive_sha256.clone().unwrap_or_default(),
        ),
        (
            "archive size",
            j.archive_size
                .map(|s| format!("{s} bytes"))
                .unwrap_or_default(),
        ),
    ];
    b.push_str("<section><h2>Details</h2><table class=\"kv\" id=\"details\">");
    for (k, val) in rows {
        if val.is_empty() {
            continue;
        }
        let _ = write!(
            b,
            "<tr><th>{k}</th><td>{v}</td></tr>",
            k = esc(k),
            v = esc(&val)
        );
    }
    b.push_str("</table></section><section><h2>Events</h2><table id=\"events\"><tbody>");
    for e in &events {
        let _ = write!(
            b,
            "<tr><td>{t}</td><td>{f} → {to}</td><td>{d}</td></tr>",
            t = esc(&at(e.at)),
            f = esc(e.from_state.as_deref().unwrap_or("·")),
            to = esc(&e.to_state),
            d = esc(e.detail.as_deref().unwrap_or("")),
        );
    }
    let request = serde_json::from_str::<serde_json::Value>(&j.request_json)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| j.request_json.clone());
    let _ = write!(
        b,
        "</tbody></table></section><section><h2>Request</h2><pre id=\"request\">{r}</pre></section>",
        r = esc(&request)
    );
    Ok(Some(page(&format!("Job {}", j.id.as_str()), &b)))
}

/// The API keys' usage: per key (name and public id; the key itself is never stored), its
/// jobs by state today and in all, its spend in the budget day against its daily cap, and its
/// request rate. The same day and sums as `seedq keys ls`.
///
/// # Errors
/// The store cannot be read.
pub async fn keys(ui: &Ui) -> Result<String, StoreError> {
    let ctx = &ui.ctx;
    let store = &ctx.store;
    let now = now_ms();
    let day = crate::worker::budget::day_start(now, ctx.ops.live.tz(), ctx.cfg.bulk.tpd_day_ms());
    let keys = store.api_keys().await?;
    let usage: BTreeMap<String, (i64, i64)> = store
        .api_key_usage(day)
        .await?
        .into_iter()
        .map(|u| (u.key, (u.jobs, u.units_today)))
        .collect();
    let mut states: BTreeMap<String, Vec<(JobState, i64, i64)>> = BTreeMap::new();
    for (key, st, total, today) in store.ui_key_states(day).await? {
        states.entry(key).or_default().push((st, total, today));
    }
    let mut b = String::from(
        "<h1>API keys</h1><p class=\"muted\">Usage of the front doors' keys (docs/api.md). \
         Today is the budget day (midnight in maintenance.timezone).</p>\
         <table id=\"keys\"><thead><tr><th>name</th><th>id</th><th>status</th>\
         <th>jobs today / total, by state</th><th>jobs today / total</th>\
         <th>spent today / daily cap</th><th>rate limit</th><th>models</th></tr></thead><tbody>",
    );
    if keys.is_empty() {
        b.push_str(
            "<tr><td colspan=\"8\" class=\"muted\">no keys: <code>seedq keys create NAME</code></td></tr>",
        );
    }
    for k in &keys {
        let per = states.get(&k.id).map(Vec::as_slice).unwrap_or_default();
        let mut by_state = String::from("<ul class=\"counts\">");
        for (st, total, today) in per {
            let _ = write!(
                by_state,
                "<li data-state=\"{s}\">{badge} <span class=\"num\">{today} / {total}</span></li>",
                s = esc(st.as_str()),
                badge = state_badge(*st),
            );
        }
        by_state.push_str("</ul>");
        let today: i64 = per.iter().map(|p| p.2).sum();
        let (jobs, units) = usage.get(&k.id).copied().unwrap_or((0, 0));
        let spend = match k.max_cost_fen {
            Some(cap) => format!("{} of {}", yuan_units(units), yuan_fen(cap)),
            None => format!("{} (no cap)", yuan_units(units)),
        };
        let rate = k
            .rpm
            .map_or("none".to_string(), |r| format!("{r} requests / min"));
        let models = k
            .models
            .as_ref()
            .map_or("all".to_string(), |m| m.join(", "));
        let status = if k.revoked_at.is_some() {
            "revoked"
        } else {
            "active"
        };
        let _ = write!(
            b,
            "<tr data-key=\"{name}\"><td>{name}</td><td><code>{id}</code></td><td>{status}</td>\
             <td>{by_state}</td><td class=\"num\" data-k=\"jobs\">{today} / {jobs}</td>\
             <td class=\"num\" data-k=\"spend\">{spend}</td><td data-k=\"rpm\">{rate}</td>\
             <td>{models}</td></tr>",
            name = esc(&k.name),
            id = esc(&k.id),
            spend = esc(&spend),
            rate = esc(&rate),
            models = esc(&models),
        );
    }
    b.push_str("</tbody></table>");
    Ok(page("Keys", &b))
}

/// The gallery's query: one batch or one chain.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct GalleryQuery {
    pub batch: Option<String>,
    pub chain: Option<String>,
}

/// Last frames of a batch's or chain's archived jobs; a click plays the clip. A finished
/// chain shows its stitched film on top.
///
/// # Errors
/// The store cannot be read.
pub async fn gallery(ui: &Ui, q: GalleryQuery) -> Result<Option<String>, StoreError> {
    let store = &ui.ctx.store;
    let mut b = String::new();
    let jobs: Vec<(String, Job)> = if let Some(chain) = nonempty(q.chain) {
        let Some(ch) = store.chain(&chain).await? else {
            return Ok(None);
        };
        let _ = write!(
            b,
            "<h1>Chain <code>{id}</code> <span class=\"st\">{st}</span></h1>",
            id = esc(&ch.id),
            st = esc(ch.state.as_str())
        );
        if ch.stitch_key.is_some() && ui.blob.is_some() {
            let _ = write!(
                b,
                "<section><h2>Stitched film</h2><video id=\"film\" controls preload=\"metadata\" \
                 src=\"/ui/chains/{id}/film\"></video></section>",
                id = esc(&qp(&ch.id))
            );
        }
        store
            .chain_shots(&ch.id)
            .await?
            .into_iter()
            .map(|s| (format!("shot {}", s.shot), s.job))
            .collect()
    } else if let Some(batch) = nonempty(q.batch) {
        let _ = write!(b, "<h1>Batch {n}</h1>", n = esc(&batch));
        let rows = store
            .ui_jobs(UiFilter {
                batch: Some(batch),
                limit: GALLERY,
                ..UiFilter::default()
            })
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        // Oldest first reads like the batch file.
        rows.into_iter()
            .rev()
            .map(|j| (prompt(&j.request_json), j))
            .collect()
    } else {
        return Ok(None);
    };
    b.push_str(
        "<dialog id=\"player\"><video id=\"player-video\" controls></video>\
         <form method=\"dialog\"><button>close</button></form></dialog><div class=\"grid\" id=\"gallery\">",
    );
    for (label, j) in &jobs {
        let id = esc(j.id.as_str());
        if j.archive_key.is_some() && ui.blob.is_some() {
            // Without a last frame, the video's own first frame is the poster.
            let still = if store.frame_digest(j.id.as_str()).await?.is_some() {
                format!(
                    "<img src=\"/ui/jobs/{id}/frame\" alt=\"last frame of {id}\" loading=\"lazy\">"
                )
            } else {
                format!("<video src=\"/ui/jobs/{id}/video\" preload=\"metadata\" muted></video>")
            };
            let _ = write!(
                b,
                "<figure class=\"tile\"><button type=\"button\" class=\"play\" \
                 data-video=\"/ui/jobs/{id}/video\">{still}</button>\
                 <figcaption><a href=\"/ui/jobs/{id}\">{l}</a></figcaption></figure>",
                l = esc(&label.chars().take(80).collect::<String>()),
            );
        } else {
            let _ = write!(
                b,
                "<figure class=\"tile empty\"><div class=\"placeholder\">{st}</div>\
                 <figcaption><a href=\"/ui/jobs/{id}\">{l}</a></figcaption></figure>",
                st = state_badge(j.state),
                l = esc(&label.chars().take(80).collect::<String>()),
            );
        }
    }
    b.push_str("</div>");
    Ok(Some(page("Gallery", &b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esc_escapes_markup_quotes_and_newlines() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\"\n"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;&#10;"
        );
    }

    #[test]
    fn the_prompt_is_the_text_item() {
        let body = r#"{"model":"m","content":[{"type":"image_url","image_url":{"url":"u"}},{"type":"text","text":"a cat --dur 5"}]}"#;
        assert_eq!(prompt(body), "a cat --dur 5");
        assert_eq!(prompt("not json"), "");
    }

    #[test]
    fn numbers_come_in_human_units() {
        assert_eq!(human_tokens(950), "950");
        assert_eq!(human_tokens(103_818), "103.8 k");
        assert_eq!(human_tokens(250_000_000_000), "250 G");
        assert_eq!(human_tokens(2_500_000), "2.5 M");
        assert_eq!(human_dur(0), "0 s");
        assert_eq!(human_dur(45_000), "45 s");
        assert_eq!(human_dur(12 * 60_000 + 5_000), "12 min");
        assert_eq!(human_dur((3 * 60 + 12) * 60_000), "3 h 12 min");
        assert_eq!(human_dur(3 * 3_600_000), "3 h");
        assert_eq!(human_dur(2 * 86_400_000 + 5 * 3_600_000), "2 d 5 h");
        assert_eq!(yuan_fen(488), "¥4.88");
        assert_eq!(yuan_units(1), "¥0.01", "rounded up to the fen");
        // Midnight in UTC+8 is 16:00 UTC.
        assert_eq!(clock(Timestamp::from_ms(16 * 3_600_000), 8), "00:00 +08:00");
        assert_eq!(clock(Timestamp::EPOCH, -5), "19:00 -05:00");
    }
}
