//! The line `read` writes to stdout for each event: one JSON object, then `\n`.

use base64::Engine as _;

/// `{"data":"<utf-8>","metadata":{...}}`, or `"data_base64"` in place of `"data"` when the
/// payload is not UTF-8; the metadata's names in order of the JSON library's map (sorted),
/// a repeated name keeping its last value. Ends with a newline.
pub fn event_line(data: &[u8], metadata: &[(String, String)]) -> Vec<u8> {
    let metadata: serde_json::Map<String, serde_json::Value> = metadata
        .iter()
        .map(|(name, value)| (name.clone(), serde_json::Value::from(value.as_str())))
        .collect();
    let object = match std::str::from_utf8(data) {
        Ok(text) => serde_json::json!({ "data": text, "metadata": metadata }),
        Err(_) => serde_json::json!({
            "data_base64": base64::engine::general_purpose::STANDARD.encode(data),
            "metadata": metadata,
        }),
    };
    let mut line = object.to_string().into_bytes();
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata() -> Vec<(String, String)> {
        [("topic", "orders/eu"), ("qos", "1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn utf8_data_is_text() {
        assert_eq!(
            String::from_utf8(event_line("héllo".as_bytes(), &metadata())).expect("utf-8"),
            "{\"data\":\"héllo\",\"metadata\":{\"qos\":\"1\",\"topic\":\"orders/eu\"}}\n"
        );
    }

    #[test]
    fn other_bytes_are_base64() {
        assert_eq!(
            String::from_utf8(event_line(&[0xff, 0x00, 0xfe], &metadata())).expect("utf-8"),
            "{\"data_base64\":\"/wD+\",\"metadata\":{\"qos\":\"1\",\"topic\":\"orders/eu\"}}\n"
        );
    }
}
