// Text from outside (channel ids, request paths, config keys) as it may appear in a log line
// or on stderr: nothing in it can start a line (or a journal entry) of its own or send an
// escape sequence to a terminal.

// C0 and C1 controls (newline, carriage return, ESC: the start of every ANSI sequence), DEL,
// the Unicode line and paragraph separators, the bidirectional overrides and isolates, lone
// surrogates, and the backslash that introduces the escapes themselves.
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069\\]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
const UNPRINTABLE_ALL = new RegExp(UNPRINTABLE.source, "g");
const ESCAPES: Readonly<Record<string, string>> = Object.freeze({ "\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\" });

/** `text` with every character that could forge a log line or drive a terminal escaped as \n, \xNN or \uNNNN. */
export function printable(text: string): string {
  if (!UNPRINTABLE.test(text)) return text;
  return text.replace(UNPRINTABLE_ALL, (c) => {
    const code = c.charCodeAt(0);
    return ESCAPES[c] ?? (code < 0x100 ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u${code.toString(16).padStart(4, "0")}`);
  });
}
