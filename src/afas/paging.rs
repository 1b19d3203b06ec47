//! Reading a GetConnector page by page: keyset paging (`key > last`, in
//! AFAS's filter syntax) or skip/take, at most `afas.concurrency` requests
//! in flight, pages streamed through a small channel.

use super::*;

/// The key values of a row as AFAS filter values; `Err(field)` when empty.
pub(super) fn key_values(row: &Row, order: &[String]) -> Result<Vec<String>, String> {
    order
        .iter()
        .map(|f| {
            let f = f.trim_start_matches('-');
            match row.get(f) {
                // `,` and `;` are AFAS's filter separators and cannot be escaped.
                Some(Value::String(s)) if !s.is_empty() && !s.contains([',', ';']) => Ok(s.clone()),
                Some(Value::Number(n)) => Ok(n.to_string()),
                Some(Value::Bool(b)) => Ok(if *b { "1" } else { "0" }.to_string()),
                _ => Err(f.to_string()),
            }
        })
        .collect()
}

/// `(k1 > v1) OR (k1 = v1 AND k2 >= v2)` for a two-field key, in AFAS's
/// filter syntax, where `,` joins with AND and `;` starts an OR group. The
/// last field is inclusive (see `read_keyset`); descending keys use `<`/`<=`.
pub fn keyset_filter(order: &[String], last: &[String]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    let mut values = Vec::new();
    let mut ops = Vec::new();
    for i in 0..order.len() {
        let mut gf = Vec::new();
        let mut gv = Vec::new();
        let mut go = Vec::new();
        for j in 0..=i {
            let (name, desc) = match order[j].strip_prefix('-') {
                Some(n) => (n, true),
                None => (order[j].as_str(), false),
            };
            gf.push(name.to_string());
            gv.push(last[j].clone());
            let last_field = i == order.len() - 1;
            go.push(match (j < i, desc, last_field) {
                (true, _, _) => "1",
                (false, false, false) => "4",
                (false, true, false) => "5",
                (false, false, true) => "2",
                (false, true, true) => "3",
            });
        }
        fields.push(gf.join(","));
        values.push(gv.join(","));
        ops.push(go.join(","));
    }
    vec![
        ("filterfieldids".into(), fields.join(";")),
        ("filtervalues".into(), values.join(";")),
        ("operatortypes".into(), ops.join(";")),
    ]
}

impl AfasClient {
    /// Requests a page on a task of its own, so it travels while the
    /// previous one is read.
    pub(super) fn spawn_page(&self, connector: &str, query: Vec<(String, String)>) -> PageTask {
        let client = self.clone();
        let connector = connector.to_string();
        PageTask(tokio::spawn(async move { client.fetch_raw(&connector, &query).await }))
    }

    /// Streams a connector's rows, page by page, in key order. The channel
    /// holds at most two pages, so memory stays bounded whatever the size of
    /// the company. Dropping the receiver stops the read.
    pub fn read(&self, spec: ReadSpec) -> mpsc::Receiver<Result<Page, AfasError>> {
        let (tx, rx) = mpsc::channel(2);
        let client = self.clone();
        tokio::spawn(async move {
            let result = match spec.paging {
                PagingMode::Keyset => client.read_keyset(&spec, &tx).await,
                PagingMode::Skip => client.read_skip(&spec, &tx).await,
            };
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
            }
        });
        rx
    }

    pub(super) fn base_query(spec: &ReadSpec) -> Vec<(String, String)> {
        let mut q = vec![
            ("orderbyfieldids".into(), spec.order.join(",")),
            ("take".into(), spec.take.to_string()),
        ];
        if let Some((field, value)) = &spec.only {
            q.push(("filterfieldids".into(), field.clone()));
            q.push(("filtervalues".into(), value.clone()));
            q.push(("operatortypes".into(), "1".into()));
        }
        q
    }

    /// Keyset paging with an inclusive bound: each page asks for `key >=
    /// last key` and drops the rows with the last key that were already
    /// handed on. With a unique key this is plain `key > last`; with a
    /// duplicated key the duplicates are still delivered (the sync engine
    /// then rejects them as a pair) instead of being skipped silently, which
    /// a strict `>` would do when they straddle a page boundary.
    pub(super) async fn read_keyset(
        &self,
        spec: &ReadSpec,
        tx: &mpsc::Sender<Result<Page, AfasError>>,
    ) -> Result<(), AfasError> {
        let paging_err = |reason: String| AfasError::Paging {
            connector: spec.connector.clone(),
            reason,
        };
        let mut cursor = Cursor::default();
        let keyset_query = |last: Option<&[String]>| {
            let mut query = Self::base_query(spec);
            query.push(("skip".into(), "0".into()));
            if let Some(last) = last {
                query.extend(keyset_filter(&spec.order, last));
            }
            query
        };
        let mut pending = Some(self.spawn_page(&spec.connector, keyset_query(None)));
        for number in 0..MAX_PAGES {
            // Only a full page asks for another, and a full page without a
            // next request has returned its error below; never end quietly.
            let Some(mut task) = pending.take() else {
                return Err(paging_err("a full page did not lead to a next page request".into()));
            };
            let raw = task.rows().await?;
            // Counted before parsing: an entry that is not a row still
            // fills the page, and a full page means there may be more.
            let full = raw.rows.len() >= spec.take as usize;
            // Why ask for the next page before reading this one: with
            // keyset paging each request waits for the previous answer,
            // so whatever happens between an answer and the next request
            // adds up over every page of the connector (at 100k employees
            // 130 pages in a row: a third of a second of parsing). Only the
            // last row's key is needed for the next filter; a row without
            // one stops the read below, with the reason.
            if full && number + 1 < MAX_PAGES {
                let next = raw.rows.iter().enumerate().rev().find_map(|(i, entry)| {
                    match parse_entry(entry, &spec.fields, i, &raw.path) {
                        Ok(Entry::Row(row)) => Some(key_values(&row, &spec.order).ok()),
                        _ => None,
                    }
                });
                if let Some(Some(key)) = next {
                    pending = Some(self.spawn_page(&spec.connector, keyset_query(Some(&key))));
                    // A spawned task waits in this worker's queue until
                    // this one yields, and parsing the page below does not:
                    // the request left ~1.3 ms after it was asked for (1M
                    // employees on 2 cores: 1.7 s over 1,285 pages of the
                    // contracts connector). Yielding sends it first (0.02 ms).
                    tokio::task::yield_now().await;
                }
            }
            let (fetched, bad_rows) = parse_rows(raw, &spec.fields)?;
            let (rows, last_row_keyless) = cursor.advance(fetched, &spec.order);
            if full && last_row_keyless {
                let example = rows
                    .last()
                    .map(|r| crate::afas::rows::describe_key(r, &spec.order))
                    .unwrap_or_default();
                return Err(paging_err(format!(
                    "the last row of a page ({example}) has an empty key or one containing `,`/`;`, so the next page cannot be asked for; fix the key in AFAS or set afas.paging = \"skip\""
                )));
            }
            if full && rows.is_empty() {
                // A whole page of one key value that was already read: the
                // server cannot get past it (or ignores the filter).
                return Err(paging_err(format!(
                    "more than {} rows share the key ({}) or AFAS ignored the key filter; the key must be unique",
                    spec.take,
                    spec.order.join(",")
                )));
            }
            let page = Page {
                connector: spec.connector.clone(),
                number,
                rows,
                bad_rows,
            };
            crate::progress::page(&page.connector, (page.rows.len() + page.bad_rows.len()) as u64);
            if tx.send(Ok(page)).await.is_err() {
                return Ok(());
            }
            if !full {
                return Ok(());
            }
        }
        Err(paging_err(format!("more than {MAX_PAGES} pages; stopped")))
    }

    pub(super) async fn read_skip(
        &self,
        spec: &ReadSpec,
        tx: &mpsc::Sender<Result<Page, AfasError>>,
    ) -> Result<(), AfasError> {
        // Pages are requested ahead, up to the concurrency, and handed on in
        // order; the first short page ends the read.
        let mut inflight: VecDeque<PageTask> = VecDeque::new();
        let mut next: u64 = 0;
        let mut number: u64 = 0;
        let window = self.inner.concurrency as usize;
        let result = loop {
            while inflight.len() < window && next < MAX_PAGES {
                let mut query = Self::base_query(spec);
                query.push(("skip".into(), (next * u64::from(spec.take)).to_string()));
                inflight.push_back(self.spawn_page(&spec.connector, query));
                next += 1;
            }
            let Some(mut task) = inflight.pop_front() else {
                break Err(AfasError::Paging {
                    connector: spec.connector.clone(),
                    reason: format!("more than {MAX_PAGES} pages; stopped"),
                });
            };
            let raw = match task.rows().await {
                Ok(r) => r,
                Err(e) => break Err(e),
            };
            let short = raw.rows.len() < spec.take as usize;
            let (rows, bad_rows) = match parse_rows(raw, &spec.fields) {
                Ok(r) => r,
                Err(e) => break Err(e),
            };
            let page = Page {
                connector: spec.connector.clone(),
                number,
                rows,
                bad_rows,
            };
            number += 1;
            crate::progress::page(&page.connector, (page.rows.len() + page.bad_rows.len()) as u64);
            if tx.send(Ok(page)).await.is_err() || short {
                break Ok(());
            }
        };
        // Requests still in flight are cancelled as `inflight` drops.
        result
    }
}

/// Where keyset paging stands: the last key handed on, and how many rows
/// with that key were (a page starts at that key again: `>=`).
#[derive(Default)]
struct Cursor {
    last: Option<Vec<String>>,
    seen_with_last: usize,
}

impl Cursor {
    /// The rows of a page not handed on before, and whether the page's last
    /// row has no usable key.
    fn advance(&mut self, fetched: Vec<Row>, order: &[String]) -> (Vec<Row>, bool) {
        let mut rows = Vec::with_capacity(fetched.len());
        let mut to_skip = self.seen_with_last;
        let mut last_row_keyless = false;
        for row in fetched {
            // A row without a usable key is handed on (the engine rejects
            // it); only the last row of a full page must have one, to
            // build the next page's filter.
            let Ok(key) = key_values(&row, order) else {
                last_row_keyless = true;
                rows.push(row);
                continue;
            };
            last_row_keyless = false;
            if self.last.as_ref() == Some(&key) {
                if to_skip > 0 {
                    to_skip -= 1;
                    continue;
                }
                self.seen_with_last += 1;
            } else {
                self.last = Some(key);
                self.seen_with_last = 1;
            }
            rows.push(row);
        }
        (rows, last_row_keyless)
    }
}
