//! `run --instances greeting=3`: several instances of a service in one process.

/// Parses `SERVICE=N` with `N` at least 1.
pub(crate) fn parse_instances(text: &str) -> Result<(String, usize), String> {
    let (service, count) = text
        .split_once('=')
        .ok_or_else(|| format!("expected SERVICE=N (e.g. `greeting=3`), got `{text}`"))?;
    let service = service.trim();
    if service.is_empty() {
        return Err(format!(
            "expected SERVICE=N (e.g. `greeting=3`), got `{text}`: the service name is empty"
        ));
    }
    match count.trim().parse::<usize>() {
        Ok(count) if count >= 1 => Ok((service.to_owned(), count)),
        _ => Err(format!(
            "expected SERVICE=N with N a whole number of at least 1, got `{text}`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_parse_and_bad_ones_are_named() {
        assert_eq!(parse_instances("greeting=3"), Ok(("greeting".to_owned(), 3)));
        assert_eq!(parse_instances(" web = 1 "), Ok(("web".to_owned(), 1)));
        for bad in ["greeting", "=3", "greeting=0", "greeting=x", "greeting=-1"] {
            let error = parse_instances(bad).unwrap_err();
            assert!(error.contains(bad), "{bad}: {error}");
        }
    }
}
