//! Hints for YAML parse errors whose parser message alone does not tell the
//! user what to change.

/// When the parse error at `line` (1-based) comes from an unquoted `${VAR}`
/// inside a flow list (`[a, ${B}]`, where YAML reads `{` as the start of a
/// map), the advice to quote the item, naming it.
pub fn flow_list_variable(text: &str, line: u64) -> Option<String> {
    let mut stack: Vec<char> = Vec::new();
    let mut quote: Option<char> = None;
    for (n, l) in text.lines().enumerate() {
        let on_error_line = u64::try_from(n + 1).ok() == Some(line);
        let chars: Vec<char> = l.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None => match c {
                    '\'' | '"' => quote = Some(c),
                    '#' if i == 0 || chars[i - 1].is_whitespace() => break,
                    '$' if chars.get(i + 1) == Some(&'{') => {
                        if on_error_line && stack.last() == Some(&'[') {
                            return Some(advice(&chars, i));
                        }
                        i += 1;
                    }
                    '[' | '{' => stack.push(c),
                    ']' | '}' => {
                        stack.pop();
                    }
                    _ => {}
                },
            }
            i += 1;
        }
        if on_error_line {
            return None;
        }
    }
    None
}

/// The advice for the flow item around `chars[at]`.
fn advice(chars: &[char], at: usize) -> String {
    let start = chars[..at]
        .iter()
        .rposition(|c| matches!(c, '[' | ','))
        .map_or(0, |p| p + 1);
    let mut depth = 0usize;
    let mut end = chars.len();
    for (j, c) in chars.iter().enumerate().skip(start) {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' | ']' if depth == 0 => {
                end = j;
                break;
            }
            _ => {}
        }
    }
    let item: String = chars[start..end].iter().collect();
    format!(
        "a `${{VAR}}` inside a flow list `[...]` must be quoted (YAML reads `{{` as the start of a map): write '{}', or use a block list with one `- item` per line",
        item.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::flow_list_variable;

    #[test]
    fn unquoted_variable_in_a_flow_list_is_named() {
        let text = "brokers:\n  c:\n    endpoints: [mqtts://a:8883, mqtts://${B:-b}:8883]\n";
        let hint = flow_list_variable(text, 3).expect("hint");
        assert!(hint.contains("'mqtts://${B:-b}:8883'"), "{hint}");
        let first = "    listen: [tcp://${L:-127.0.0.1:0}]\n";
        let hint = flow_list_variable(first, 1).expect("hint");
        assert!(hint.contains("'tcp://${L:-127.0.0.1:0}'"), "{hint}");
    }

    #[test]
    fn multi_line_flow_lists_are_followed() {
        let text = "endpoints: [\n  mqtt://a,\n  mqtt://${B},\n]\n";
        let hint = flow_list_variable(text, 3).expect("hint");
        assert!(hint.contains("'mqtt://${B}'"), "{hint}");
    }

    #[test]
    fn quoted_block_and_commented_variables_give_no_hint() {
        assert_eq!(flow_list_variable("e: ['mqtt://${B}']\n", 1), None);
        assert_eq!(flow_list_variable("e: [\"mqtt://${B}\"]\n", 1), None);
        assert_eq!(flow_list_variable("e:\n  - mqtt://${B}\n", 2), None);
        assert_eq!(flow_list_variable("e: [a] # [${B}]\n", 1), None);
        assert_eq!(flow_list_variable("e: mqtt://${B}\n", 1), None);
        // The variable is on another line than the error.
        assert_eq!(flow_list_variable("e: [${B}]\nf: x\n", 2), None);
    }
}
