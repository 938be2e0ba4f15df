/* fuzz_avro_decode.c: the Avro decoders of the five event records
 * (canopy/avro.h) on arbitrary bytes: what a consumer reads from a topic.
 *
 * Input: byte 0 selects the record (low 3 bits) and, when bit 0x80 is set,
 * the rest is taken as a body and prefixed with the record's valid header
 * (marker + current fingerprint) so that the fuzzer reaches the body
 * decoder; otherwise the rest is the whole payload (header included).
 * A decoded event is re-encoded and decoded again: both must succeed and
 * the second encoding must equal the first (abort otherwise). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "canopy/avro.h"

#define CHECK(c)                  \
        do {                      \
                if (!(c))         \
                        abort();  \
        } while (0)


/* Decode buf as record `rec`; on success encode it into *out (owned). */
static canopy_err decode_encode(canopy_record rec, const uint8_t *buf, size_t len, canopy_bytes *out) {
        char eb[CANOPY_AVRO_ERRLEN];
        canopy_err err = CANOPY_ERR_DECODE;
        out->data = NULL;
        out->len = 0;
        switch (rec) {
        case CANOPY_REC_CHANGE: {
                canopy_change_event ev;
                err = canopy_avro_decode_change(buf, len, &ev, eb, sizeof(eb));
                if (!err) {
                        err = canopy_avro_encode_change(&ev, out, eb, sizeof(eb));
                        canopy_change_event_free(&ev);
                }
                break;
        }
        case CANOPY_REC_MV: {
                canopy_mv_event ev;
                err = canopy_avro_decode_mv(buf, len, &ev, eb, sizeof(eb));
                if (!err) {
                        err = canopy_avro_encode_mv(&ev, out, eb, sizeof(eb));
                        canopy_mv_event_free(&ev);
                }
                break;
        }
        case CANOPY_REC_EXPORT: {
                canopy_export_record ev;
                err = canopy_avro_decode_export(buf, len, &ev, eb, sizeof(eb));
                if (!err) {
                        err = canopy_avro_encode_export(&ev, out, eb, sizeof(eb));
                        canopy_export_record_free(&ev);
                }
                break;
        }
        case CANOPY_REC_CONTROL: {
                canopy_control_event ev;
                err = canopy_avro_decode_control(buf, len, &ev, eb, sizeof(eb));
                if (!err) {
                        err = canopy_avro_encode_control(&ev, out, eb, sizeof(eb));
                        canopy_control_event_free(&ev);
                }
                break;
        }
        case CANOPY_REC_DEAD_LETTER: {
                canopy_dead_letter ev;
                err = canopy_avro_decode_dead_letter(buf, len, &ev, eb, sizeof(eb));
                if (!err) {
                        err = canopy_avro_encode_dead_letter(&ev, out, eb, sizeof(eb));
                        canopy_dead_letter_free(&ev);
                }
                break;
        }
        default: {
                canopy_run_record ev;
                err = canopy_avro_decode_run(buf, len, &ev, eb, sizeof(eb));
                if (!err) {
                        err = canopy_avro_encode_run(&ev, out, eb, sizeof(eb));
                        canopy_run_record_free(&ev);
                }
                break;
        }
        }
        return err;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size < 1)
                return 0;
        canopy_record rec = (canopy_record)((data[0] & 7) % CANOPY_REC_COUNT);
        const uint8_t *buf = data + 1;
        size_t len = size - 1;
        uint8_t *framed = NULL;
        if (data[0] & 0x80) {
                framed = malloc(len + CANOPY_AVRO_HEADER_LEN);
                if (!framed)
                        return 0;
                uint64_t fp = canopy_avro_schema_fingerprint(rec);
                framed[0] = CANOPY_AVRO_MAGIC0;
                framed[1] = CANOPY_AVRO_MAGIC1;
                for (int i = 0; i < 8; i++)
                        framed[2 + i] = (uint8_t)(fp >> (8 * i));
                if (len)
                        memcpy(framed + CANOPY_AVRO_HEADER_LEN, buf, len);
                buf = framed;
                len += CANOPY_AVRO_HEADER_LEN;
        }
        canopy_record peeked;
        int version = 0;
        (void)canopy_avro_peek(buf, len, &peeked, &version);

        canopy_bytes once;
        if (decode_encode(rec, buf, len, &once) == CANOPY_OK) {
                /* What was decoded must encode (the caps are the same both
                 * ways), decode again, and encode to the same bytes. */
                canopy_bytes twice;
                CHECK(once.data);
                CHECK(decode_encode(rec, once.data, once.len, &twice) == CANOPY_OK);
                CHECK(twice.len == once.len && !memcmp(twice.data, once.data, once.len));
                free(twice.data);
                /* Resolution to the current schema is the identity. */
                canopy_bytes res;
                char eb[CANOPY_AVRO_ERRLEN];
                if (canopy_avro_resolve(once.data, once.len, canopy_avro_schema_json(rec), &res, eb, sizeof(eb)) ==
                    CANOPY_OK)
                        free(res.data);
                free(once.data);
        }
        free(framed);
        return 0;
}
