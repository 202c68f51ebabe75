#include "CCryptoGlue.h"

#include <dlfcn.h>
#include <limits.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>

// The few EVP functions used, looked up in libcrypto.so.3 (OpenSSL 3's stable ABI); the
// prototypes are OpenSSL's own.
static struct {
    int loaded;
    char reason[256];
    __typeof__(&EVP_CIPHER_CTX_new) ctx_new;
    __typeof__(&EVP_CIPHER_CTX_free) ctx_free;
    __typeof__(&EVP_CIPHER_CTX_ctrl) ctx_ctrl;
    __typeof__(&EVP_aes_256_gcm) aes_256_gcm;
    __typeof__(&EVP_EncryptInit_ex) encrypt_init;
    __typeof__(&EVP_EncryptUpdate) encrypt_update;
    __typeof__(&EVP_EncryptFinal_ex) encrypt_final;
    __typeof__(&EVP_DecryptInit_ex) decrypt_init;
    __typeof__(&EVP_DecryptUpdate) decrypt_update;
    __typeof__(&EVP_DecryptFinal_ex) decrypt_final;
} lc;

static pthread_once_t once = PTHREAD_ONCE_INIT;

static void load(void) {
    void *library = dlopen("libcrypto.so.3", RTLD_NOW | RTLD_LOCAL);
    if (!library) {
        snprintf(lc.reason, sizeof lc.reason, "cannot load libcrypto.so.3 (Debian's libssl3): %s", dlerror());
        return;
    }
#define FIND(field, name)                                                                   \
    if (!(lc.field = (__typeof__(lc.field))dlsym(library, name))) {                          \
        snprintf(lc.reason, sizeof lc.reason, "libcrypto.so.3 lacks %s", name);              \
        return;                                                                              \
    }
    FIND(ctx_new, "EVP_CIPHER_CTX_new")
    FIND(ctx_free, "EVP_CIPHER_CTX_free")
    FIND(ctx_ctrl, "EVP_CIPHER_CTX_ctrl")
    FIND(aes_256_gcm, "EVP_aes_256_gcm")
    FIND(encrypt_init, "EVP_EncryptInit_ex")
    FIND(encrypt_update, "EVP_EncryptUpdate")
    FIND(encrypt_final, "EVP_EncryptFinal_ex")
    FIND(decrypt_init, "EVP_DecryptInit_ex")
    FIND(decrypt_update, "EVP_DecryptUpdate")
    FIND(decrypt_final, "EVP_DecryptFinal_ex")
#undef FIND
    lc.loaded = 1;
}

int ds_aead_load(char *reason, size_t reason_size) {
    pthread_once(&once, load);
    if (lc.loaded) return 0;
    snprintf(reason, reason_size, "%s", lc.reason);
    return -1;
}

int ds_aes256gcm_seal(const uint8_t *key, const uint8_t *nonce, const uint8_t *aad, size_t aad_length,
                      const uint8_t *input, size_t length, uint8_t *output, uint8_t *tag) {
    char reason[8];
    if (ds_aead_load(reason, sizeof reason) != 0 || length > INT_MAX || aad_length > INT_MAX) return -1;
    EVP_CIPHER_CTX *ctx = lc.ctx_new();
    if (!ctx) return -1;
    int n = 0, ok = lc.encrypt_init(ctx, lc.aes_256_gcm(), NULL, key, nonce) == 1
        && (aad_length == 0 || lc.encrypt_update(ctx, NULL, &n, aad, (int)aad_length) == 1)
        && (length == 0 || lc.encrypt_update(ctx, output, &n, input, (int)length) == 1)
        && lc.encrypt_final(ctx, output + length, &n) == 1
        && lc.ctx_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1;
    lc.ctx_free(ctx);
    return ok ? 0 : -1;
}

int ds_aes256gcm_open(const uint8_t *key, const uint8_t *nonce, const uint8_t *aad, size_t aad_length,
                      const uint8_t *input, size_t length, const uint8_t *tag, uint8_t *output) {
    char reason[8];
    if (ds_aead_load(reason, sizeof reason) != 0 || length > INT_MAX || aad_length > INT_MAX) return -1;
    EVP_CIPHER_CTX *ctx = lc.ctx_new();
    if (!ctx) return -1;
    int n = 0, ready = lc.decrypt_init(ctx, lc.aes_256_gcm(), NULL, key, nonce) == 1
        && (aad_length == 0 || lc.decrypt_update(ctx, NULL, &n, aad, (int)aad_length) == 1)
        && (length == 0 || lc.decrypt_update(ctx, output, &n, input, (int)length) == 1)
        && lc.ctx_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, (void *)tag) == 1;
    int result = !ready ? -1 : lc.decrypt_final(ctx, output + length, &n) == 1 ? 0 : 1;
    lc.ctx_free(ctx);
    return result;
}
