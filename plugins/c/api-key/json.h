/* json.h: a small JSON reader for plugin configs (the route's `config` table arrives as
 * JSON text). It parses the whole text into a tree of values that the caller walks and
 * then frees with json_free. No dependencies beyond the C standard library. */
#ifndef PORTCULLIS_JSON_H
#define PORTCULLIS_JSON_H

#include <stddef.h>

typedef enum {
    JSON_NULL,
    JSON_BOOL,
    JSON_NUMBER,
    JSON_STRING,
    JSON_ARRAY,
    JSON_OBJECT,
} json_type;

typedef struct json_value json_value;

struct json_value {
    json_type type;
    int boolean;        /* JSON_BOOL: 0 or 1 */
    double number;      /* JSON_NUMBER */
    char *string;       /* JSON_STRING: UTF-8, NUL-terminated (a \u0000 escape is refused) */
    size_t length;      /* JSON_STRING: bytes; JSON_ARRAY, JSON_OBJECT: number of items */
    json_value *items;  /* JSON_ARRAY, JSON_OBJECT: the values */
    char **keys;        /* JSON_OBJECT: keys[i] names items[i] */
};

/* Parses `len` bytes of `text` (need not be NUL-terminated) into *out. Returns 0, or -1
 * with a message such as "expected `:` at byte 12" in err (at most errlen bytes, NUL
 * included); on failure *out holds nothing to free. */
int json_parse(const char *text, size_t len, json_value *out, char *err, size_t errlen);

/* Frees what json_parse allocated under *v (not v itself). */
void json_free(json_value *v);

/* The value of `key` in an object, or NULL (also when obj is not an object). */
const json_value *json_get(const json_value *obj, const char *key);

/* "null", "a boolean", "a number", "a string", "a list", "a table": for messages. */
const char *json_type_name(json_type type);

#endif
