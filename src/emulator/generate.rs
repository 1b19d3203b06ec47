//! Generated companies: Dutch names with prefixes, departments, contracts,
//! pay; deterministic per seed; and a day of churn.

use super::*;

/// SplitMix64: tiny, fast, and stable across versions, so a seed produces
/// the same company forever (a dependency's RNG may change its stream).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
    pub fn pick<'a>(&mut self, items: &'a [&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

pub(super) const FIRST_NAMES: &[&str] = &[
    "Jan",
    "Piet",
    "Kees",
    "Daan",
    "Sem",
    "Lucas",
    "Finn",
    "Bram",
    "Thijs",
    "Ruben",
    "Emma",
    "Sophie",
    "Julia",
    "Anna",
    "Lotte",
    "Saar",
    "Fleur",
    "Noor",
    "Zoë",
    "Chloë",
    "Daniël",
    "Gijs",
    "Maartje",
    "Anouk",
    "Mehmet",
    "Fatima",
    "Mohammed",
    "Yasmina",
    "Françoise",
    "Jörg",
    "Ilse",
    "Wouter",
    "Sanne",
    "Joost",
    "Marieke",
    "Hüseyin",
    "Eline",
    "Sven",
    "Iris",
    "Niels",
];

pub(super) const LAST_NAMES: &[&str] = &[
    "Jansen",
    "Bakker",
    "Visser",
    "Smit",
    "Meijer",
    "Mulder",
    "Bos",
    "Vos",
    "Peters",
    "Hendriks",
    "Dekker",
    "Brouwer",
    "Dijkstra",
    "Kok",
    "Jacobs",
    "Willems",
    "Veenstra",
    "Özdemir",
    "Yılmaz",
    "El Amrani",
    "Groot",
    "Berg",
    "Heuvel",
    "Vliet",
    "Hoek",
    "Wit",
    "Laan",
    "Broek",
    "Linden",
    "Velde",
    "Graaf",
    "Koning",
    "Haan",
    "Leeuw",
    "Ruiter",
];

/// Dutch surname prefixes ("tussenvoegsels"), most names have none.
pub(super) const PREFIXES: &[&str] = &[
    "van", "de", "van der", "van den", "van de", "ter", "ten", "den", "'t", "in 't", "van 't", "op de", "de la", "le",
];

pub(super) const DEPARTMENTS: &[&str] = &[
    "Finance",
    "HR",
    "ICT",
    "Sales",
    "Marketing",
    "Operations",
    "Klantenservice",
    "Logistiek",
    "Inkoop",
    "Juridische Zaken",
    "Productie",
    "Onderzoek & Ontwikkeling",
];

pub(super) fn ascii_fold(s: &str) -> String {
    s.chars()
        .filter_map(|c| {
            let folded = match c {
                'à' | 'á' | 'â' | 'ä' | 'ã' => 'a',
                'è' | 'é' | 'ê' | 'ë' => 'e',
                'ì' | 'í' | 'î' | 'ï' | 'ı' => 'i',
                'ò' | 'ó' | 'ô' | 'ö' => 'o',
                'ù' | 'ú' | 'û' | 'ü' => 'u',
                'ç' => 'c',
                'ş' => 's',
                'ğ' => 'g',
                c if c.is_ascii_alphanumeric() => c.to_ascii_lowercase(),
                ' ' | '-' => '-',
                _ => return None,
            };
            Some(folded)
        })
        .collect()
}

/// Salary, holiday allowance and leave rows for one employee, drawn from a
/// stream of its own so the employee and contract rows stay the same.
pub(super) fn generate_pay(rng: &mut Rng, id: &str, start: Date, today: Date) -> [Vec<JsonRow>; 3] {
    let row = |pairs: &[(&str, Value)]| -> JsonRow { pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect() };
    let base = 2_500 + rng.below(4_000) as i64;
    let mut salary = vec![row(&[
        ("EmployeeId", json!(id)),
        ("DateStart", afas_date(start)),
        ("Salary", json!(base)),
    ])];
    let raise_on = today.checked_sub(((1 + rng.below(300)) as i64).days()).unwrap_or(today);
    if raise_on > start && rng.chance(500) {
        salary.push(row(&[
            ("EmployeeId", json!(id)),
            ("DateStart", afas_date(raise_on)),
            ("Salary", json!(base + 150)),
        ]));
    }
    // Amounts in cents, as a payroll has them.
    let accrual = (base * 8) as f64 / 100.0;
    let wages = vec![
        row(&[
            ("EmployeeId", json!(id)),
            ("WageComponentId", json!(HOLIDAY_ACCRUAL_ID)),
            ("Amount", json!(accrual)),
        ]),
        row(&[
            ("EmployeeId", json!(id)),
            ("WageComponentId", json!(HOLIDAY_BALANCE_ID)),
            ("Amount", json!((base * 40) as f64 / 100.0)),
        ]),
    ];
    let leave = vec![
        row(&[
            ("EmployeeId", json!(id)),
            ("LeaveTypeId", json!("VAK")),
            ("BalanceHours", json!(rng.below(200) as i64)),
        ]),
        row(&[
            ("EmployeeId", json!(id)),
            ("LeaveTypeId", json!("ADV")),
            ("BalanceHours", json!(rng.below(40) as i64)),
        ]),
    ];
    [salary, wages, leave]
}

/// Width of generated employee ids: zero-padded so text order equals numeric
/// order, as in a typical AFAS administration.
pub(super) fn employee_id(n: u64) -> String {
    format!("{:07}", 1_000_000 + n)
}

/// Builds one generated employee and its contracts.
pub(super) fn generate_employee(rng: &mut Rng, n: u64, today: Date) -> (JsonRow, Vec<JsonRow>) {
    let first = rng.pick(FIRST_NAMES);
    let last = rng.pick(LAST_NAMES);
    let prefix = if rng.chance(300) {
        Some(rng.pick(PREFIXES))
    } else {
        None
    };
    let dept = rng.pick(DEPARTMENTS);
    let birth = today
        .checked_sub(((20 + rng.below(45)) as i64 * 365 + rng.below(365) as i64).days())
        .unwrap_or(today);
    // Employment: most employees started in the past; a few start in the
    // future (pre-hires), a few have left, a few have a termination ahead.
    let start = if rng.chance(10) {
        today.checked_add(((1 + rng.below(30)) as i64).days()).unwrap_or(today)
    } else {
        today
            .checked_sub(((1 + rng.below(15 * 365)) as i64).days())
            .unwrap_or(today)
    };
    let end: Option<Date> = if start <= today && rng.chance(30) {
        let days_ago = 1 + rng.below(300) as i64;
        let candidate = today.checked_sub(days_ago.days()).unwrap_or(today);
        Some(if candidate < start { start } else { candidate })
    } else if rng.chance(10) {
        Some(today.checked_add(((1 + rng.below(60)) as i64).days()).unwrap_or(today))
    } else {
        None
    };
    // Contracts: one, sometimes a renewal (next day) or two.
    let n_contracts = if rng.chance(200) {
        2
    } else if rng.chance(50) {
        3
    } else {
        1
    };
    let id = employee_id(n);
    let mut contracts = Vec::new();
    let total_days = end.map(|e| (e - start).get_days().max(0) as i64).unwrap_or(2 * 365);
    let mut c_start = start;
    for seq in 1..=n_contracts {
        let last_one = seq == n_contracts;
        let c_end = if last_one {
            end
        } else {
            let len = (total_days / n_contracts as i64).max(1);
            c_start.checked_add(len.days()).ok()
        };
        let fte = [10_000i64, 8_000, 6_000, 5_000][rng.below(4) as usize];
        let mut c = JsonRow::new();
        c.insert("EmployeeId".into(), json!(id));
        c.insert("SequenceNumber".into(), json!(seq));
        c.insert("DateStart".into(), afas_date(c_start));
        c.insert("DateEnd".into(), c_end.map(afas_date).unwrap_or(Value::Null));
        c.insert("Fte".into(), json!(fte as f64 / 10_000.0));
        c.insert("HoursPerWeek".into(), json!(fte as f64 / 10_000.0 * 40.0));
        c.insert(
            "EmploymentType".into(),
            json!(if rng.chance(800) { "Vast" } else { "Tijdelijk" }),
        );
        contracts.push(c);
        match c_end.and_then(|e| e.checked_add(1.day()).ok()) {
            Some(next) => c_start = next,
            None => break,
        }
    }
    let local = {
        let mut parts = vec![ascii_fold(first)];
        if let Some(p) = prefix {
            parts.push(ascii_fold(p));
        }
        parts.push(ascii_fold(last));
        parts.retain(|p| !p.is_empty());
        parts.join(".")
    };
    let mail = if rng.chance(15) {
        Value::Null
    } else {
        json!(format!("{local}.{n}@bedrijf.example"))
    };
    let mut e = JsonRow::new();
    e.insert("EmployeeId".into(), json!(id));
    e.insert("Mail".into(), mail);
    e.insert("FirstName".into(), json!(first));
    e.insert("BirthName".into(), json!(last));
    e.insert(
        "PrefixBirthName".into(),
        prefix.map(|p| json!(p)).unwrap_or(Value::Null),
    );
    e.insert("EmploymentStart".into(), afas_date(start));
    e.insert("EmploymentEnd".into(), end.map(afas_date).unwrap_or(Value::Null));
    e.insert("Department".into(), json!(dept));
    e.insert("DateOfBirth".into(), afas_date(birth));
    e.insert("AlleoAccess".into(), json!(!rng.chance(20)));
    e.insert(
        "alleo_monthly_all_budget".into(),
        json!([25.0, 50.0, 75.5, 100.0][rng.below(4) as usize]),
    );
    (e, contracts)
}

/// A deterministic company of `employees` people as of `today`.
pub fn generate(seed: u64, employees: u64, today: Date) -> Dataset {
    let mut rng = Rng::new(seed);
    let mut pay_rng = Rng::new(seed ^ 0x5A1A_4100);
    let mut emp_rows = Vec::with_capacity(employees as usize);
    let mut con_rows = Vec::with_capacity(employees as usize * 13 / 10);
    let (mut sal_rows, mut wage_rows, mut leave_rows) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..employees {
        let (e, c) = generate_employee(&mut rng, n, today);
        let start = e
            .get("EmploymentStart")
            .and_then(Value::as_str)
            .and_then(crate::afas::rows::parse_afas_date)
            .unwrap_or(today);
        let [s, w, l] = generate_pay(&mut pay_rng, &employee_id(n), start, today);
        sal_rows.extend(s);
        wage_rows.extend(w);
        leave_rows.extend(l);
        emp_rows.push(e);
        con_rows.extend(c);
    }
    let mut ds = Dataset::default();
    ds.connectors.insert(
        EMPLOYEES_CONNECTOR.into(),
        ConnectorData {
            description: "Alleo employees".into(),
            fields: employee_fields(),
            rows: emp_rows,
        },
    );
    ds.connectors.insert(
        CONTRACTS_CONNECTOR.into(),
        ConnectorData {
            description: "Alleo contracts".into(),
            fields: contract_fields(),
            rows: con_rows,
        },
    );
    for (name, description, fields, rows) in [
        (SALARY_CONNECTOR, "Alleo salary", salary_fields(), sal_rows),
        (WAGE_CONNECTOR, "Alleo wage components", wage_fields(), wage_rows),
        (LEAVE_CONNECTOR, "Alleo leave", leave_fields(), leave_rows),
    ] {
        ds.connectors.insert(
            name.into(),
            ConnectorData {
                description: description.into(),
                fields,
                rows,
            },
        );
    }
    ds
}

/// What [`churn`] changed, for demo output and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChurnSummary {
    pub joiners: Vec<String>,
    pub leavers: Vec<String>,
    pub movers: Vec<String>,
}

/// Moves a generated company one day on: `joiners`, `leavers` and `movers`
/// are per mille of the active employees (no end date). Leavers get yesterday as their
/// last day; movers change department.
pub fn churn(ds: &mut Dataset, seed: u64, today: Date, joiners: u64, leavers: u64, movers: u64) -> ChurnSummary {
    let mut rng = Rng::new(seed ^ 0xC0FF_EE00);
    let mut summary = ChurnSummary::default();
    let yesterday = today.checked_sub(1.day()).unwrap_or(today);
    let Some(emps) = ds.connectors.get(EMPLOYEES_CONNECTOR) else {
        return summary;
    };
    let mut next_n = emps
        .rows
        .iter()
        .filter_map(|r| r.get("EmployeeId").and_then(Value::as_str))
        .filter_map(|s| s.parse::<u64>().ok())
        .max()
        .map(|m| m.saturating_sub(1_000_000) + 1)
        .unwrap_or(0);
    let active: Vec<usize> = emps
        .rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.get("EmploymentEnd").is_none_or(Value::is_null))
        .map(|(i, _)| i)
        .collect();
    // The shares are of today's workforce, not of every row AFAS keeps:
    // leavers stay in the connector, and counting them would make the churn
    // of a simulated year grow day by day.
    let count = active.len() as u64;
    let mut changed: std::collections::BTreeSet<usize> = Default::default();
    let n_leavers = (count * leavers).div_ceil(1000).min(active.len() as u64);
    let n_movers = (count * movers).div_ceil(1000);
    let n_joiners = (count * joiners).div_ceil(1000);
    let mut leaver_ids = Vec::new();
    let mut tries = 0;
    while (leaver_ids.len() as u64) < n_leavers && tries < n_leavers * 20 {
        tries += 1;
        let i = active[rng.below(active.len() as u64) as usize];
        if changed.insert(i) {
            leaver_ids.push(i);
        }
    }
    let emps = ds.connectors.get_mut(EMPLOYEES_CONNECTOR);
    let Some(emps) = emps else { return summary };
    for &i in &leaver_ids {
        let row = &mut emps.rows[i];
        row.insert("EmploymentEnd".into(), afas_date(yesterday));
        if let Some(id) = row.get("EmployeeId").and_then(Value::as_str) {
            summary.leavers.push(id.to_string());
        }
    }
    tries = 0;
    while (summary.movers.len() as u64) < n_movers && tries < n_movers * 20 && !active.is_empty() {
        tries += 1;
        let i = active[rng.below(active.len() as u64) as usize];
        if !changed.insert(i) {
            continue;
        }
        let row = &mut emps.rows[i];
        let current = row.get("Department").and_then(Value::as_str).unwrap_or("").to_string();
        let mut dept = rng.pick(DEPARTMENTS);
        if dept == current {
            dept = DEPARTMENTS[(DEPARTMENTS.iter().position(|d| *d == dept).unwrap_or(0) + 1) % DEPARTMENTS.len()];
        }
        row.insert("Department".into(), json!(dept));
        if let Some(id) = row.get("EmployeeId").and_then(Value::as_str) {
            summary.movers.push(id.to_string());
        }
    }
    let mut new_contracts = Vec::new();
    for _ in 0..n_joiners {
        let (mut e, mut c) = generate_employee(&mut rng, next_n, today);
        next_n += 1;
        // A joiner starts today with an open-ended contract.
        e.insert("EmploymentStart".into(), afas_date(today));
        e.insert("EmploymentEnd".into(), Value::Null);
        c.truncate(1);
        if let Some(first) = c.first_mut() {
            first.insert("DateStart".into(), afas_date(today));
            first.insert("DateEnd".into(), Value::Null);
        }
        if let Some(id) = e.get("EmployeeId").and_then(Value::as_str) {
            summary.joiners.push(id.to_string());
        }
        emps.rows.push(e);
        new_contracts.extend(c);
    }
    if let Some(cons) = ds.connectors.get_mut(CONTRACTS_CONNECTOR) {
        let left: std::collections::BTreeSet<&str> = summary.leavers.iter().map(String::as_str).collect();
        // A leaver's open contract ends yesterday too.
        for c in cons.rows.iter_mut() {
            let is_leaver = c
                .get("EmployeeId")
                .and_then(Value::as_str)
                .is_some_and(|id| left.contains(id));
            if is_leaver && c.get("DateEnd").is_none_or(Value::is_null) {
                c.insert("DateEnd".into(), afas_date(yesterday));
            }
        }
        cons.rows.extend(new_contracts);
    }
    summary
}
