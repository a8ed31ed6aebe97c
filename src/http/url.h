// HTTP url helpers: percent-encoding for targets built by clients and percent-decoding
// for targets parsed by the server. Decoding never trusts its input.
#pragma once

#include <map>
#include <string>
#include <string_view>

#include "common/result.h"

namespace tartarus::http {

// Percent-encodes everything but the RFC 3986 unreserved characters [A-Za-z0-9-._~],
// so the result is safe as one path segment or one query key/value.
std::string UrlEncode(std::string_view text);

// Decodes %XX escapes; plus_is_space also turns '+' into ' ' (query strings).
// A truncated or non-hex escape, or a decoded NUL byte, is kInvalidArgument.
Result<std::string> UrlDecode(std::string_view text, bool plus_is_space = false);

// Splits "a=1&b=x%20y" into decoded pairs; a key without '=' gets "". Later keys win.
Result<std::map<std::string, std::string>> ParseQuery(std::string_view query);

// ASCII case-insensitive equality (header names).
bool EqualsIgnoreCase(std::string_view a, std::string_view b);

}  // namespace tartarus::http
