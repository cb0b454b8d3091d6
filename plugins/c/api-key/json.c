/* json.c: the parser behind json.h. Recursive descent over a NUL-terminated copy of the
 * text, nesting limited to JSON_MAX_DEPTH levels. */
#include "json.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSON_MAX_DEPTH 64

typedef struct {
    const char *start;
    const char *p;
    const char *end;
    char *err;
    size_t errlen;
    int depth;
} parser;

static int fail(parser *ps, const char *what) {
    snprintf(ps->err, ps->errlen, "%s at byte %zu", what, (size_t)(ps->p - ps->start));
    return -1;
}

static void skip_space(parser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static int parse_value(parser *ps, json_value *out);

static int hex4(parser *ps, uint32_t *out) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = ps->p < ps->end ? *ps->p : 0;
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return fail(ps, "expected 4 hex digits after \\u");
        v = v * 16 + (uint32_t)d;
        ps->p++;
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *dst, uint32_t cp) {
    if (cp < 0x80) {
        dst[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        dst[0] = (char)(0xC0 | (cp >> 6));
        dst[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        dst[0] = (char)(0xE0 | (cp >> 12));
        dst[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        dst[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    dst[0] = (char)(0xF0 | (cp >> 18));
    dst[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    dst[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    dst[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* At the opening quote. The decoded text is never longer than the quoted one. */
static int parse_string(parser *ps, char **out, size_t *out_len) {
    const char *q = ps->p + 1;
    while (q < ps->end && *q != '"')
        q += (*q == '\\' && q + 1 < ps->end) ? 2 : 1;
    if (q >= ps->end)
        return fail(ps, "unterminated string");
    char *buf = malloc((size_t)(q - ps->p));
    if (!buf)
        return fail(ps, "out of memory");
    size_t n = 0;
    ps->p++;
    while (*ps->p != '"') {
        unsigned char c = (unsigned char)*ps->p;
        if (c < 0x20) {
            free(buf);
            return fail(ps, "control character in string");
        }
        if (c != '\\') {
            buf[n++] = (char)c;
            ps->p++;
            continue;
        }
        ps->p++;
        char e = *ps->p++;
        uint32_t cp;
        switch (e) {
        case '"': buf[n++] = '"'; break;
        case '\\': buf[n++] = '\\'; break;
        case '/': buf[n++] = '/'; break;
        case 'b': buf[n++] = '\b'; break;
        case 'f': buf[n++] = '\f'; break;
        case 'n': buf[n++] = '\n'; break;
        case 'r': buf[n++] = '\r'; break;
        case 't': buf[n++] = '\t'; break;
        case 'u':
            if (hex4(ps, &cp) < 0) {
                free(buf);
                return -1;
            }
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                uint32_t lo;
                if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u') {
                    free(buf);
                    return fail(ps, "lone surrogate in \\u escape");
                }
                ps->p += 2;
                if (hex4(ps, &lo) < 0) {
                    free(buf);
                    return -1;
                }
                if (lo < 0xDC00 || lo > 0xDFFF) {
                    free(buf);
                    return fail(ps, "lone surrogate in \\u escape");
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                free(buf);
                return fail(ps, "lone surrogate in \\u escape");
            } else if (cp == 0) {
                free(buf);
                return fail(ps, "\\u0000 in string");
            }
            n += put_utf8(buf + n, cp);
            break;
        default:
            free(buf);
            ps->p--;
            return fail(ps, "unknown escape");
        }
    }
    ps->p++;
    buf[n] = 0;
    *out = buf;
    *out_len = n;
    return 0;
}

static int parse_number(parser *ps, json_value *out) {
    const char *s = ps->p;
    const char *q = s;
    if (*q == '-')
        q++;
    if (*q == '0') {
        q++;
    } else if (*q >= '1' && *q <= '9') {
        while (*q >= '0' && *q <= '9')
            q++;
    } else {
        return fail(ps, "expected a value");
    }
    if (*q == '.') {
        q++;
        if (!(*q >= '0' && *q <= '9'))
            return fail(ps, "expected a digit after `.`");
        while (*q >= '0' && *q <= '9')
            q++;
    }
    if (*q == 'e' || *q == 'E') {
        q++;
        if (*q == '+' || *q == '-')
            q++;
        if (!(*q >= '0' && *q <= '9'))
            return fail(ps, "expected a digit in the exponent");
        while (*q >= '0' && *q <= '9')
            q++;
    }
    out->type = JSON_NUMBER;
    out->number = strtod(s, NULL);
    ps->p = q;
    return 0;
}

static int literal(parser *ps, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0)
        return fail(ps, "expected a value");
    ps->p += n;
    return 0;
}

/* Appends a zeroed slot to v->items (and v->keys for objects); returns it or NULL. */
static json_value *push(json_value *v, size_t *cap) {
    if (v->length == *cap) {
        size_t ncap = *cap ? *cap * 2 : 4;
        json_value *items = realloc(v->items, ncap * sizeof *items);
        if (!items)
            return NULL;
        v->items = items;
        if (v->type == JSON_OBJECT) {
            char **keys = realloc(v->keys, ncap * sizeof *keys);
            if (!keys)
                return NULL;
            v->keys = keys;
        }
        *cap = ncap;
    }
    json_value *slot = &v->items[v->length];
    memset(slot, 0, sizeof *slot);
    return slot;
}

/* At `[` or `{`. Items are counted in v->length only once complete, so that json_free
 * can clean up a half-built container. */
static int parse_container(parser *ps, json_value *v, json_type type) {
    char close = type == JSON_ARRAY ? ']' : '}';
    size_t cap = 0;
    v->type = type;
    if (++ps->depth > JSON_MAX_DEPTH)
        return fail(ps, "nested too deeply");
    ps->p++;
    skip_space(ps);
    if (*ps->p == close) {
        ps->p++;
        ps->depth--;
        return 0;
    }
    for (;;) {
        json_value *slot = push(v, &cap);
        if (!slot)
            return fail(ps, "out of memory");
        if (type == JSON_OBJECT) {
            char *key;
            size_t key_len;
            skip_space(ps);
            if (*ps->p != '"')
                return fail(ps, "expected a string key");
            if (parse_string(ps, &key, &key_len) < 0)
                return -1;
            v->keys[v->length] = key;
            skip_space(ps);
            if (*ps->p != ':') {
                free(key);
                return fail(ps, "expected `:`");
            }
            ps->p++;
            if (parse_value(ps, slot) < 0) {
                json_free(slot);
                free(key);
                return -1;
            }
        } else if (parse_value(ps, slot) < 0) {
            json_free(slot);
            return -1;
        }
        v->length++;
        skip_space(ps);
        if (*ps->p == ',') {
            ps->p++;
            continue;
        }
        if (*ps->p == close) {
            ps->p++;
            ps->depth--;
            return 0;
        }
        return fail(ps, type == JSON_ARRAY ? "expected `,` or `]`" : "expected `,` or `}`");
    }
}

static int parse_value(parser *ps, json_value *out) {
    skip_space(ps);
    switch (*ps->p) {
    case '{':
        return parse_container(ps, out, JSON_OBJECT);
    case '[':
        return parse_container(ps, out, JSON_ARRAY);
    case '"':
        out->type = JSON_STRING;
        return parse_string(ps, &out->string, &out->length);
    case 't':
        out->type = JSON_BOOL;
        out->boolean = 1;
        return literal(ps, "true");
    case 'f':
        out->type = JSON_BOOL;
        return literal(ps, "false");
    case 'n':
        out->type = JSON_NULL;
        return literal(ps, "null");
    default:
        return parse_number(ps, out);
    }
}

int json_parse(const char *text, size_t len, json_value *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    /* A NUL-terminated copy: every look-ahead can stop at the NUL instead of checking
     * the end, and strtod needs it. A NUL inside the text ends the parse early and is
     * reported as trailing data or a missing value. */
    char *copy = malloc(len + 1);
    if (!copy) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memcpy(copy, text, len);
    copy[len] = 0;
    parser ps = {copy, copy, copy + len, err, errlen, 0};
    int rc = parse_value(&ps, out);
    if (rc == 0) {
        skip_space(&ps);
        if (ps.p != ps.end)
            rc = fail(&ps, "unexpected data after the value");
    }
    if (rc < 0)
        json_free(out);
    free(copy);
    return rc;
}

void json_free(json_value *v) {
    for (size_t i = 0; i < v->length && v->items; i++) {
        json_free(&v->items[i]);
        if (v->keys)
            free(v->keys[i]);
    }
    if (v->type == JSON_STRING)
        free(v->string);
    free(v->items);
    free(v->keys);
    memset(v, 0, sizeof *v);
}

const json_value *json_get(const json_value *obj, const char *key) {
    if (obj->type != JSON_OBJECT)
        return NULL;
    for (size_t i = 0; i < obj->length; i++)
        if (strcmp(obj->keys[i], key) == 0)
            return &obj->items[i];
    return NULL;
}

const char *json_type_name(json_type type) {
    switch (type) {
    case JSON_NULL: return "null";
    case JSON_BOOL: return "a boolean";
    case JSON_NUMBER: return "a number";
    case JSON_STRING: return "a string";
    case JSON_ARRAY: return "a list";
    case JSON_OBJECT: return "a table";
    }
    return "a value";
}
