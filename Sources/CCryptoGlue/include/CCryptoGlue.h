// CCryptoGlue: AES-256-GCM sealed and opened in place, through OpenSSL's libcrypto.
//
// Why: swift-crypto's AES-GCM returns each ciphertext and plaintext in a buffer of its own,
// and a buffer of a pack block's size is mapped and unmapped each time (docs/PERFORMANCE.md,
// "Encrypted repositories"); these write into the caller's buffers. libcrypto is loaded at
// run time, by the first call (only an encrypted repository makes one), as libcurl is: linked,
// it would slow every command's start.
#ifndef DISKSNAP_CCRYPTOGLUE_H
#define DISKSNAP_CCRYPTOGLUE_H

#include <stddef.h>
#include <stdint.h>

/// Loads libcrypto (once). 0, or -1 with the reason in `reason`.
int ds_aead_load(char *reason, size_t reason_size);

/// AES-256-GCM of `length` bytes at `input` into `output` (may be `input`), the 16-byte tag
/// into `tag`; `key` 32 bytes, `nonce` 12. 0, or -1 (libcrypto failed).
int ds_aes256gcm_seal(const uint8_t *key, const uint8_t *nonce, const uint8_t *aad, size_t aad_length,
                      const uint8_t *input, size_t length, uint8_t *output, uint8_t *tag);

/// The reverse: 0 when `tag` authenticates (`output` then holds the plaintext), 1 when it
/// does not (`output` holds garbage: never use it), -1 when libcrypto failed.
int ds_aes256gcm_open(const uint8_t *key, const uint8_t *nonce, const uint8_t *aad, size_t aad_length,
                      const uint8_t *input, size_t length, const uint8_t *tag, uint8_t *output);

#endif
