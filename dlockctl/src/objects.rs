//! `dlockctl list` and `dlockctl sessions`: the cluster's named objects and open sessions, read
//! linearizably from any node (`dlock.v1.Admin` `ListObjects` / `ListSessions`), as a table or
//! as JSON (`-o json`) for scripts.

use dlock::admin::{ObjectSummary, QueryReply, SessionSummary};
use dlock::{Client, ObjectKind};
use serde_json::{Value, json};

use crate::Failure;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// One JSON document for scripts.
    Json,
}

/// The most objects or sessions one page asks for (the server's limit).
const PAGE_MAX: u32 = 1000;

/// The kind of an object as printed.
fn kind_name(state: &QueryReply) -> &'static str {
    match ObjectKind::from_wire(state.kind) {
        Some(ObjectKind::Mutex) => "mutex",
        Some(ObjectKind::Event) => "event",
        Some(ObjectKind::Semaphore) => "semaphore",
        None => "?",
    }
}

/// An object's state in a few words.
fn state_words(state: &QueryReply) -> String {
    match ObjectKind::from_wire(state.kind) {
        Some(ObjectKind::Mutex) if state.owner_session_id != 0 => {
            format!("owned x{}", state.recursion)
        }
        Some(ObjectKind::Mutex) if state.abandoned => "abandoned".into(),
        Some(ObjectKind::Mutex) => "free".into(),
        Some(ObjectKind::Event) => format!(
            "{} {}",
            if state.manual_reset { "manual" } else { "auto" },
            if state.signaled {
                "signaled"
            } else {
                "unsignaled"
            }
        ),
        Some(ObjectKind::Semaphore) => format!("count {}/{}", state.count, state.maximum),
        None => "?".into(),
    }
}

fn object_json(o: &ObjectSummary) -> Value {
    let state = o.state.unwrap_or_default();
    let mut value = json!({
        "name": o.name,
        "type": kind_name(&state),
        "handles": o.handles,
        "waiters": o.waiters,
    });
    let extra = match ObjectKind::from_wire(state.kind) {
        Some(ObjectKind::Mutex) => json!({
            "owner_session": state.owner_session_id,
            "owner_thread": state.owner_thread_id,
            "recursion": state.recursion,
            "abandoned": state.abandoned,
            "fencing_token": state.fencing_token,
        }),
        Some(ObjectKind::Event) => json!({
            "manual_reset": state.manual_reset,
            "signaled": state.signaled,
        }),
        Some(ObjectKind::Semaphore) => json!({ "count": state.count, "maximum": state.maximum }),
        None => json!({}),
    };
    if let (Value::Object(map), Value::Object(more)) = (&mut value, extra) {
        map.extend(more);
    }
    value
}

/// `list [--prefix P] [--after NAME] [--limit N]`: pages through the objects until `limit`.
pub async fn list(
    client: &Client,
    prefix: &str,
    after: &str,
    limit: u32,
    output: Output,
) -> Result<(), Failure> {
    let mut objects: Vec<ObjectSummary> = Vec::new();
    let mut token = after.to_owned();
    let next = loop {
        let want = limit.saturating_sub(objects.len() as u32).min(PAGE_MAX);
        if want == 0 {
            break (!token.is_empty()).then_some(token);
        }
        let page = client
            .admin()
            .list_objects(prefix, &token, want)
            .await
            .map_err(|e| Failure(format!("list: {e}")))?;
        objects.extend(page.objects);
        if page.next_page_token.is_empty() {
            break None;
        }
        token = page.next_page_token;
    };
    match output {
        Output::Json => {
            let doc = json!({
                "objects": objects.iter().map(object_json).collect::<Vec<_>>(),
                "next": next,
            });
            println!("{doc:#}");
        }
        Output::Table => {
            println!(
                "{:<9} {:<32} {:<18} {:<14} {:>7} {:>7} {:>9}",
                "TYPE", "NAME", "STATE", "OWNER", "HANDLES", "WAITERS", "TOKEN"
            );
            for o in &objects {
                let state = o.state.unwrap_or_default();
                let owner = if state.owner_session_id == 0 {
                    "-".to_owned()
                } else {
                    format!("{}/{}", state.owner_session_id, state.owner_thread_id)
                };
                let token = if state.fencing_token == 0 {
                    "-".to_owned()
                } else {
                    state.fencing_token.to_string()
                };
                println!(
                    "{:<9} {:<32} {:<18} {:<14} {:>7} {:>7} {:>9}",
                    kind_name(&state),
                    o.name,
                    state_words(&state),
                    owner,
                    o.handles,
                    o.waiters,
                    token
                );
            }
            if let Some(next) = next {
                println!(
                    "(more objects follow: continue with --after '{}')",
                    next.replace('\'', "'\\''")
                );
            }
        }
    }
    Ok(())
}

fn session_json(s: &SessionSummary) -> Value {
    json!({
        "session": s.session_id,
        "client": s.client_name,
        "ttl_ms": s.ttl_ms,
        "silence_ms": s.silence_ms,
        "handles": s.handles,
        "pending_waits": s.pending_waits,
        "owned_mutexes": s.owned_mutexes,
        "owned_count": s.owned_count,
    })
}

/// The mutexes a session owns, as the table prints them: the names listed, and how many more.
fn owns(s: &SessionSummary) -> String {
    let listed = s.owned_mutexes.join(",");
    match s.owned_count.saturating_sub(s.owned_mutexes.len() as u64) {
        0 => listed,
        more if listed.is_empty() => format!("({more} unnamed or unlisted)"),
        more => format!("{listed} (+{more})"),
    }
}

/// `sessions`: every open session.
pub async fn sessions(client: &Client, output: Output) -> Result<(), Failure> {
    let mut sessions: Vec<SessionSummary> = Vec::new();
    let mut token = 0;
    loop {
        let page = client
            .admin()
            .list_sessions(token, PAGE_MAX)
            .await
            .map_err(|e| Failure(format!("sessions: {e}")))?;
        sessions.extend(page.sessions);
        if page.next_page_token == 0 {
            break;
        }
        token = page.next_page_token;
    }
    match output {
        Output::Json => {
            let doc = json!({ "sessions": sessions.iter().map(session_json).collect::<Vec<_>>() });
            println!("{doc:#}");
        }
        Output::Table => {
            println!(
                "{:<10} {:<28} {:>8} {:>10} {:>7} {:>6}  OWNS",
                "SESSION", "CLIENT", "TTL_MS", "SILENT_MS", "HANDLES", "WAITS"
            );
            for s in &sessions {
                println!(
                    "{:<10} {:<28} {:>8} {:>10} {:>7} {:>6}  {}",
                    s.session_id,
                    s.client_name,
                    s.ttl_ms,
                    s.silence_ms,
                    s.handles,
                    s.pending_waits,
                    owns(s)
                );
            }
        }
    }
    Ok(())
}
