/* The InferRequest / InferResponse hot path in C (factory/fastcodec.py loads it).
 *
 * parse_infer(payload) reads an Envelope{request_id, infer_request} frame in the
 * canonical layout and returns (request_id, model, version, values, shape, config)
 * or None for anything else (the caller then decodes it with protobuf, which also
 * produces every error message). encode_infer_reply(...) writes one framed
 * Envelope{request_id, infer_response} byte for byte as protobuf does; its pure
 * Python twin is factory.codec.encode_infer_reply.
 *
 * split_frames(...) splits a read's complete length-prefixed frames in one call (twin:
 * netlib.framing.split_frames); refuse_run(...) answers a run of InferRequest frames the
 * admission gate refuses, all their BUSY Error frames in one buffer (twin:
 * factory.codec.refuse_run).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static int read_varint(const unsigned char *p, Py_ssize_t n, Py_ssize_t *i, uint64_t *out) {
    uint64_t value = 0;
    int shift = 0;
    while (*i < n && shift < 64) {
        unsigned char byte = p[(*i)++];
        value |= (uint64_t)(byte & 0x7F) << shift;
        if (byte < 0x80) {
            if (shift == 63 && byte > 1) return 0; /* over 64 bits: protobuf rejects it */
            *out = value;
            return 1;
        }
        shift += 7;
    }
    return 0;
}

/* A length-delimited field's body: [*i, *i + len) inside n; advances *i past it. */
static int read_span(const unsigned char *p, Py_ssize_t n, Py_ssize_t *i, Py_ssize_t *start,
                     Py_ssize_t *len) {
    uint64_t length;
    if (!read_varint(p, n, i, &length) || length > (uint64_t)(n - *i)) return 0;
    *start = *i;
    *len = (Py_ssize_t)length;
    *i += *len;
    return 1;
}

static PyObject *utf8(const unsigned char *p, Py_ssize_t len) {
    PyObject *text = PyUnicode_DecodeUTF8((const char *)p, len, NULL);
    if (text == NULL) PyErr_Clear();
    return text;
}

/* Tensor{values (packed float) or raw_values, shape (packed uint32)}: both value fields,
 * unpacked or repeated fields, or raw_values not a multiple of 4 bytes give 0 (not the
 * fast path: protobuf decodes it and the handler answers the error). */
static int parse_tensor(const unsigned char *p, Py_ssize_t n, Py_ssize_t *values_at,
                        Py_ssize_t *values_len, PyObject **shape) {
    Py_ssize_t i = 0, start, len;
    int seen_values = 0, seen_shape = 0;
    *values_at = 0;
    *values_len = 0;
    while (i < n) {
        uint64_t tag;
        if (!read_varint(p, n, &i, &tag)) return 0;
        if ((tag == 0x0A || tag == 0x1A) && !seen_values) { /* values (packed), raw_values */
            seen_values = 1;
            if (!read_span(p, n, &i, &start, &len) || len % 4) return 0;
            *values_at = start;
            *values_len = len;
        } else if (tag == 0x12 && !seen_shape) { /* shape, packed */
            seen_shape = 1;
            if (!read_span(p, n, &i, &start, &len)) return 0;
            Py_ssize_t j = start, end = start + len, count = 0;
            uint64_t dim;
            while (j < end) {
                if (!read_varint(p, end, &j, &dim) || dim > 0xFFFFFFFFu) return 0;
                count++;
            }
            PyObject *dims = PyTuple_New(count);
            if (dims == NULL) return -1;
            j = start;
            for (Py_ssize_t k = 0; k < count; k++) {
                read_varint(p, end, &j, &dim);
                PyObject *item = PyLong_FromUnsignedLongLong(dim);
                if (item == NULL) {
                    Py_DECREF(dims);
                    return -1;
                }
                PyTuple_SET_ITEM(dims, k, item);
            }
            *shape = dims;
        } else {
            return 0;
        }
    }
    return 1;
}

static int valid_utf8(const unsigned char *p, Py_ssize_t len) {
    PyObject *text = utf8(p, len);
    Py_XDECREF(text);
    return text != NULL;
}

/* One config map entry {1: key, 2: ConfigValue{1 int64, 2 double, 3 bool, 4 string}},
 * checked to be one protobuf decodes (anything unusual: 0, not the fast path). */
static int valid_config_entry(const unsigned char *p, Py_ssize_t n) {
    Py_ssize_t i = 0, s, l;
    uint64_t tag, scalar;
    while (i < n) {
        if (!read_varint(p, n, &i, &tag)) return 0;
        if (tag == 0x0A) {
            if (!read_span(p, n, &i, &s, &l) || !valid_utf8(p + s, l)) return 0;
        } else if (tag == 0x12) {
            if (!read_span(p, n, &i, &s, &l)) return 0;
            const unsigned char *v = p + s;
            Py_ssize_t j = 0, vs, vl;
            while (j < l) {
                if (!read_varint(v, l, &j, &tag)) return 0;
                if (tag == 0x08 || tag == 0x18) {
                    if (!read_varint(v, l, &j, &scalar)) return 0;
                } else if (tag == 0x11) {
                    if (l - j < 8) return 0;
                    j += 8;
                } else if (tag == 0x22) {
                    if (!read_span(v, l, &j, &vs, &vl) || !valid_utf8(v + vs, vl)) return 0;
                } else {
                    return 0;
                }
            }
        } else {
            return 0;
        }
    }
    return 1;
}

static PyObject *parse_infer(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *p = view.buf;
    Py_ssize_t n = view.len, i = 0, start, len;
    uint64_t request_id = 0, tag;
    PyObject *result = NULL, *model = NULL, *version = NULL, *values = NULL, *shape = NULL;
    PyObject *config = NULL;

    if (n > 0 && p[0] == 0x08) {
        i = 1;
        if (!read_varint(p, n, &i, &request_id)) goto not_fast;
    }
    if (i >= n || p[i] != 0x52) goto not_fast; /* infer_request, field 10 */
    i++;
    if (!read_span(p, n, &i, &start, &len) || i != n) goto not_fast; /* must be last */
    {
        const unsigned char *r = p + start;
        Py_ssize_t m = len, j = 0, s, l;
        Py_ssize_t model_at = 0, model_len = 0, version_at = 0, version_len = 0;
        Py_ssize_t tensor_at = 0, tensor_len = 0, config_at = -1, config_end = -1;
        int seen_model = 0, seen_version = 0, seen_tensor = 0;
        while (j < m) {
            Py_ssize_t field_at = j; /* where this field's tag starts */
            if (!read_varint(r, m, &j, &tag)) goto not_fast;
            if (!read_span(r, m, &j, &s, &l)) goto not_fast;
            if (tag == 0x0A && !seen_model && config_at < 0) {
                seen_model = 1, model_at = s, model_len = l;
            } else if (tag == 0x12 && !seen_version && config_at < 0) {
                seen_version = 1, version_at = s, version_len = l;
            } else if (tag == 0x1A && !seen_tensor && config_at < 0) {
                seen_tensor = 1, tensor_at = s, tensor_len = l;
            } else if (tag == 0x22 && (config_at < 0 || config_end == field_at)) {
                /* config entries: one contiguous run at the end, kept as bytes */
                if (!valid_config_entry(r + s, l)) goto not_fast;
                if (config_at < 0) config_at = field_at;
                config_end = j;
            } else {
                goto not_fast;
            }
        }
        model = utf8(r + model_at, model_len);
        if (model == NULL) goto not_fast;
        version = utf8(r + version_at, version_len);
        if (version == NULL) goto not_fast;
        Py_ssize_t values_at = 0, values_len = 0;
        int ok = parse_tensor(r + tensor_at, tensor_len, &values_at, &values_len, &shape);
        if (ok < 0) goto error;
        if (!ok) goto not_fast;
        if (shape == NULL) {
            shape = PyTuple_New(0);
            if (shape == NULL) goto error;
        }
        values = PyBytes_FromStringAndSize((const char *)r + tensor_at + values_at, values_len);
        if (values == NULL) goto error;
        config = config_at < 0 ? PyBytes_FromStringAndSize(NULL, 0)
                               : PyBytes_FromStringAndSize((const char *)r + config_at,
                                                           config_end - config_at);
        if (config == NULL) goto error;
    }
    result = Py_BuildValue("(KOOOOO)", (unsigned long long)request_id, model, version, values,
                           shape, config);
    goto done;
not_fast:
    result = Py_NewRef(Py_None);
    goto done;
error:
    result = NULL;
done:
    Py_XDECREF(model);
    Py_XDECREF(version);
    Py_XDECREF(values);
    Py_XDECREF(shape);
    Py_XDECREF(config);
    PyBuffer_Release(&view);
    return result;
}

/* The request id and model of an InferRequest frame in the canonical layout
 * (factory.codec.peek_infer_head): 1 when read (*model_len 0 when unset), else 0. */
static int peek_head(const unsigned char *p, Py_ssize_t n, uint64_t *request_id,
                     Py_ssize_t *model_at, Py_ssize_t *model_len) {
    Py_ssize_t i = 0;
    uint64_t length;
    *request_id = 0;
    *model_at = *model_len = 0;
    if (n == 0) return 0;
    if (p[0] == 0x08) {
        i = 1;
        if (!read_varint(p, n, &i, request_id)) return 0; /* over 64 bits: decode it */
    }
    if (i >= n || p[i] != 0x52) return 0;
    i++;
    if (!read_varint(p, n, &i, &length) || length != (uint64_t)(n - i)) return 0;
    if (i >= n || p[i] != 0x0A) return 1;
    i++;
    return read_span(p, n, &i, model_at, model_len);
}

/* factory.codec.peek_infer_head in C: (request_id, model bytes) or None. */
static PyObject *peek_infer_head(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *p = view.buf;
    uint64_t request_id;
    Py_ssize_t at, len;
    PyObject *result;
    if (peek_head(p, view.len, &request_id, &at, &len))
        result = Py_BuildValue("(Ky#)", (unsigned long long)request_id, (const char *)p + at, len);
    else
        result = Py_NewRef(Py_None);
    PyBuffer_Release(&view);
    return result;
}

static Py_ssize_t put_varint(unsigned char *out, uint64_t value) {
    Py_ssize_t i = 0;
    while (value > 0x7F) {
        out[i++] = (unsigned char)((value & 0x7F) | 0x80);
        value >>= 7;
    }
    out[i++] = (unsigned char)value;
    return i;
}

static Py_ssize_t varint_size(uint64_t value) {
    Py_ssize_t size = 1;
    while (value > 0x7F) {
        value >>= 7;
        size++;
    }
    return size;
}

/* A float32 field, omitted when its bits are all zero (proto3; -0.0 is sent). */
static Py_ssize_t put_float(unsigned char *out, unsigned char tag, double value) {
    float f = (float)value;
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if (bits == 0) return 0;
    out[0] = tag;
    memcpy(out + 1, &f, 4); /* little-endian hosts only (x86, ARM): checked at import */
    return 5;
}

static PyObject *encode_infer_reply(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "encode_infer_reply takes 7 arguments");
        return NULL;
    }
    unsigned long long request_id = PyLong_AsUnsignedLongLong(args[0]);
    if (request_id == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    double queue_wait = PyFloat_AsDouble(args[4]);
    if (queue_wait == -1.0 && PyErr_Occurred()) return NULL;
    double total = PyFloat_AsDouble(args[6]);
    if (total == -1.0 && PyErr_Occurred()) return NULL;
    if (!PyBytes_Check(args[1]) || !PyBytes_Check(args[2]) || !PyBytes_Check(args[5]) ||
        (args[3] != Py_None && !PyBytes_Check(args[3]))) {
        PyErr_SetString(PyExc_TypeError, "head, predictions, confidence, batch_part: bytes");
        return NULL;
    }
    Py_ssize_t head_len = PyBytes_GET_SIZE(args[1]);
    Py_ssize_t pred_len = PyBytes_GET_SIZE(args[2]);
    Py_ssize_t conf_len = args[3] == Py_None ? 0 : PyBytes_GET_SIZE(args[3]);
    Py_ssize_t part_len = PyBytes_GET_SIZE(args[5]);

    unsigned char timings[16 + 64];
    Py_ssize_t t = put_float(timings, 0x0D, queue_wait);
    if (part_len > 64) {
        PyErr_SetString(PyExc_ValueError, "batch_part is too long");
        return NULL;
    }
    memcpy(timings + t, PyBytes_AS_STRING(args[5]), part_len);
    t += part_len;
    t += put_float(timings + t, 0x25, total);

    Py_ssize_t body = head_len + 1 + varint_size((uint64_t)t) + t;
    if (pred_len) body += 1 + varint_size((uint64_t)pred_len) + pred_len;
    if (conf_len) body += 1 + varint_size((uint64_t)conf_len) + conf_len;
    Py_ssize_t envelope = 2 + varint_size((uint64_t)body) + body;
    if (request_id) envelope += 1 + varint_size(request_id);
    if (envelope > 0xFFFFFFFF) {
        PyErr_SetString(PyExc_ValueError, "reply too large to frame");
        return NULL;
    }
    PyObject *frame = PyBytes_FromStringAndSize(NULL, 4 + envelope);
    if (frame == NULL) return NULL;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(frame);
    uint32_t size = (uint32_t)envelope;
    out[0] = (unsigned char)(size >> 24), out[1] = (unsigned char)(size >> 16);
    out[2] = (unsigned char)(size >> 8), out[3] = (unsigned char)size;
    Py_ssize_t o = 4;
    if (request_id) {
        out[o++] = 0x08;
        o += put_varint(out + o, request_id);
    }
    out[o++] = 0xA2, out[o++] = 0x01;
    o += put_varint(out + o, (uint64_t)body);
    memcpy(out + o, PyBytes_AS_STRING(args[1]), head_len);
    o += head_len;
    if (pred_len) {
        out[o++] = 0x1A;
        o += put_varint(out + o, (uint64_t)pred_len);
        memcpy(out + o, PyBytes_AS_STRING(args[2]), pred_len);
        o += pred_len;
    }
    if (conf_len) {
        out[o++] = 0x22;
        o += put_varint(out + o, (uint64_t)conf_len);
        memcpy(out + o, PyBytes_AS_STRING(args[3]), conf_len);
        o += conf_len;
    }
    out[o++] = 0x2A;
    o += put_varint(out + o, (uint64_t)t);
    memcpy(out + o, timings, t);
    return frame;
}

static uint32_t read_prefix(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* The arguments split_frames and refuse_run share: (data, offset, max_length, limit). */
static int frame_args(PyObject *const *args, Py_buffer *view, Py_ssize_t *offset,
                      Py_ssize_t *max_length, Py_ssize_t *limit) {
    *offset = PyLong_AsSsize_t(args[1]);
    if (*offset == -1 && PyErr_Occurred()) return 0;
    *max_length = PyLong_AsSsize_t(args[2]);
    if (*max_length == -1 && PyErr_Occurred()) return 0;
    *limit = PyLong_AsSsize_t(args[3]);
    if (*limit == -1 && PyErr_Occurred()) return 0;
    if (PyObject_GetBuffer(args[0], view, PyBUF_SIMPLE) < 0) return 0;
    if (*offset < 0 || *offset > view->len) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "offset outside the data");
        return 0;
    }
    return 1;
}

/* netlib.framing.split_frames in C. */
static PyObject *split_frames(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "split_frames takes 4 arguments");
        return NULL;
    }
    Py_buffer view;
    Py_ssize_t offset, max_length, limit, oversize = -1;
    if (!frame_args(args, &view, &offset, &max_length, &limit)) return NULL;
    const unsigned char *p = view.buf;
    Py_ssize_t n = view.len;
    PyObject *frames = PyList_New(0), *result = NULL;
    if (frames == NULL) goto done;
    while (PyList_GET_SIZE(frames) < limit && n - offset >= 4) {
        uint32_t length = read_prefix(p + offset);
        if ((uint64_t)length > (uint64_t)max_length) {
            oversize = (Py_ssize_t)length;
            break;
        }
        if ((Py_ssize_t)length > n - offset - 4) break;
        PyObject *payload = PyBytes_FromStringAndSize((const char *)p + offset + 4, length);
        if (payload == NULL || PyList_Append(frames, payload) < 0) {
            Py_XDECREF(payload);
            goto done;
        }
        Py_DECREF(payload);
        offset += 4 + (Py_ssize_t)length;
    }
    result = Py_BuildValue("(Onn)", frames, offset, oversize);
done:
    Py_XDECREF(frames);
    PyBuffer_Release(&view);
    return result;
}

/* The Error body ``by_model`` holds for this model (bytes keys; a small dict), else NULL. */
static PyObject *body_for(PyObject *by_model, const unsigned char *model, Py_ssize_t len,
                          PyObject **key_out) {
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(by_model, &pos, &key, &value)) {
        if (PyBytes_Check(key) && PyBytes_GET_SIZE(key) == len && PyBytes_Check(value) &&
            memcmp(PyBytes_AS_STRING(key), model, (size_t)len) == 0) {
            *key_out = key;
            return value;
        }
    }
    return NULL;
}

/* factory.codec.refuse_run in C:
 * refuse_run(data, offset, max_length, limit, every, by_model) ->
 *     (busy_frames, next_offset, count, {model: count} or None). */
static PyObject *refuse_run(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "refuse_run takes 6 arguments");
        return NULL;
    }
    PyObject *every = args[4], *by_model = args[5];
    if ((every != Py_None && !PyBytes_Check(every)) || !PyDict_Check(by_model)) {
        PyErr_SetString(PyExc_TypeError, "every: bytes or None; by_model: dict");
        return NULL;
    }
    Py_buffer view;
    Py_ssize_t offset, max_length, limit, count = 0;
    if (!frame_args(args, &view, &offset, &max_length, &limit)) return NULL;
    const unsigned char *p = view.buf;
    Py_ssize_t n = view.len;
    PyObject *models = NULL, *result = NULL;
    unsigned char stack[4096], *out = stack;
    Py_ssize_t used = 0, capacity = sizeof stack;
    while (count < limit && n - offset >= 4) {
        uint32_t length = read_prefix(p + offset);
        if ((uint64_t)length > (uint64_t)max_length || (Py_ssize_t)length > n - offset - 4)
            break;
        const unsigned char *frame = p + offset + 4;
        uint64_t request_id;
        Py_ssize_t model_at, model_len;
        if (!peek_head(frame, length, &request_id, &model_at, &model_len)) break;
        PyObject *body = every, *key = NULL;
        if (body == Py_None) {
            body = body_for(by_model, frame + model_at, model_len, &key);
            if (body == NULL) break;
        }
        Py_ssize_t body_len = PyBytes_GET_SIZE(body);
        Py_ssize_t envelope = 2 + varint_size((uint64_t)body_len) + body_len;
        if (request_id) envelope += 1 + varint_size(request_id);
        if (used + 4 + envelope > capacity) {
            Py_ssize_t grown = (capacity + 4 + envelope) * 2;
            unsigned char *bigger = out == stack ? PyMem_Malloc(grown) : PyMem_Realloc(out, grown);
            if (bigger == NULL) {
                PyErr_NoMemory();
                goto done;
            }
            if (out == stack) memcpy(bigger, stack, used);
            out = bigger, capacity = grown;
        }
        if (key != NULL) {
            if (models == NULL && (models = PyDict_New()) == NULL) goto done;
            PyObject *seen = PyDict_GetItemWithError(models, key);
            if (seen == NULL && PyErr_Occurred()) goto done;
            PyObject *total = PyLong_FromSsize_t(1 + (seen ? PyLong_AsSsize_t(seen) : 0));
            if (total == NULL || PyDict_SetItem(models, key, total) < 0) {
                Py_XDECREF(total);
                goto done;
            }
            Py_DECREF(total);
        }
        unsigned char *o = out + used;
        o[0] = (unsigned char)(envelope >> 24), o[1] = (unsigned char)(envelope >> 16);
        o[2] = (unsigned char)(envelope >> 8), o[3] = (unsigned char)envelope;
        o += 4;
        if (request_id) {
            *o++ = 0x08;
            o += put_varint(o, request_id);
        }
        *o++ = 0xAA, *o++ = 0x01;
        o += put_varint(o, (uint64_t)body_len);
        memcpy(o, PyBytes_AS_STRING(body), body_len);
        used += 4 + envelope;
        offset += 4 + (Py_ssize_t)length;
        count++;
    }
    result = Py_BuildValue("(y#nnO)", (const char *)out, used, offset, count,
                           models ? models : Py_None);
done:
    if (out != stack) PyMem_Free(out);
    Py_XDECREF(models);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"parse_infer", parse_infer, METH_O,
     "(request_id, model, version, values, shape, config) of a canonical InferRequest "
     "frame, else None."},
    {"peek_infer_head", peek_infer_head, METH_O,
     "(request_id, model bytes) of an InferRequest frame (factory.codec.peek_infer_head)."},
    {"encode_infer_reply", (PyCFunction)(void (*)(void))encode_infer_reply, METH_FASTCALL,
     "One framed Envelope{request_id, infer_response} (factory.codec.encode_infer_reply)."},
    {"split_frames", (PyCFunction)(void (*)(void))split_frames, METH_FASTCALL,
     "(frames, next_offset, oversize) of data[offset:] (netlib.framing.split_frames)."},
    {"refuse_run", (PyCFunction)(void (*)(void))refuse_run, METH_FASTCALL,
     "(busy_frames, next_offset, count, models) of the frames the gate refuses "
     "(factory.codec.refuse_run)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_fastcodec",
    .m_doc = "The InferRequest / InferResponse hot path in C.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__fastcodec(void) { return PyModule_Create(&module); }
