//! One scrape of the daemon's metrics text, parsed into samples.
//!
//! Hand-written rather than a crate: the format needed is the one line shape gatewayd itself
//! writes (`name{label="value",…} value`, comments skipped), in both exposition formats
//! (OpenMetrics now, Prometheus 0.0.4 when asked); the crates that parse it (prometheus-parse)
//! are unmaintained and read only 0.0.4.

use std::collections::HashMap;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("metrics line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: &'static str,
}

/// Label names and values, in the order written.
pub type LabelPairs = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: LabelPairs,
    pub value: f64,
    /// The series as written (name and labels): the key that matches it across scrapes.
    pub series: String,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default, Clone)]
pub struct Scrape {
    samples: Vec<Sample>,
    by_series: HashMap<String, usize>,
}

impl Scrape {
    pub fn parse(text: &str) -> Result<Scrape, ParseError> {
        let mut scrape = Scrape::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let sample = parse_line(line).map_err(|reason| ParseError { line: i + 1, reason })?;
            scrape.by_series.insert(sample.series.clone(), scrape.samples.len());
            scrape.samples.push(sample);
        }
        Ok(scrape)
    }

    /// Every sample, in the order written.
    pub fn all(&self) -> &[Sample] {
        &self.samples
    }

    /// Every sample of the metric `name`.
    pub fn samples<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The value of the same series in this scrape.
    pub fn value_of(&self, series: &str) -> Option<f64> {
        self.by_series.get(series).map(|&i| self.samples[i].value)
    }
}

fn parse_line(line: &str) -> Result<Sample, &'static str> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty() {
        return Err("no metric name");
    }
    let (labels, rest) = if line[name_end..].starts_with('{') {
        let (labels, used) = parse_labels(&line[name_end + 1..])?;
        (labels, &line[name_end + 1 + used..])
    } else {
        (Vec::new(), &line[name_end..])
    };
    let series = &line[..line.len() - rest.len()];
    // The value, then maybe a timestamp (and in OpenMetrics maybe an exemplar after `#`).
    let value = rest.split_whitespace().next().ok_or("no value")?;
    let value = value.parse::<f64>().map_err(|_| "value is not a number")?;
    Ok(Sample { name: name.to_owned(), labels, value, series: series.to_owned() })
}

/// Labels after the `{`; returns them and the bytes used, the closing `}` included.
fn parse_labels(s: &str) -> Result<(LabelPairs, usize), &'static str> {
    let mut labels = Vec::new();
    let mut chars = s.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| *c == ',' || *c == ' ').is_some() {}
        let (start, c) = chars.next().ok_or("unterminated labels")?;
        if c == '}' {
            return Ok((labels, start + 1));
        }
        let mut end = start;
        for (i, c) in chars.by_ref() {
            if c == '=' {
                end = i;
                break;
            }
        }
        if end == start {
            return Err("label without a value");
        }
        let key = s[start..end].to_owned();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err("label value is not quoted");
        }
        let mut value = String::new();
        loop {
            match chars.next().ok_or("unterminated label value")?.1 {
                '"' => break,
                '\\' => match chars.next().ok_or("unterminated label value")?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                c => value.push(c),
            }
        }
        labels.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_labels_values_and_escapes() {
        let text = "# HELP x y\n# TYPE gateway_http_requests counter\n\
            gateway_http_requests_total{route=\"a\\\"b\",status=\"200\"} 12\n\
            gateway_up 1.5 1700000000\n\
            gateway_request_duration_seconds_bucket{route=\"r\",le=\"+Inf\"} 3 # {trace_id=\"x\"} 1\n# EOF\n";
        let s = Scrape::parse(text).unwrap();
        let r: Vec<_> = s.samples("gateway_http_requests_total").collect();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].label("route"), Some("a\"b"));
        assert_eq!(r[0].label("status"), Some("200"));
        assert_eq!(r[0].value, 12.0);
        assert_eq!(s.samples("gateway_up").next().unwrap().value, 1.5);
        let b = s.samples("gateway_request_duration_seconds_bucket").next().unwrap();
        assert_eq!((b.label("le"), b.value), (Some("+Inf"), 3.0));
        assert_eq!(s.value_of("gateway_http_requests_total{route=\"a\\\"b\",status=\"200\"}"), Some(12.0));
    }

    #[test]
    fn a_broken_line_is_named() {
        let err = Scrape::parse("ok 1\nbad{route=\"x} 1\n").unwrap_err();
        assert_eq!(err, ParseError { line: 2, reason: "unterminated label value" });
    }
}
