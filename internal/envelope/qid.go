package envelope

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"strings"
	"time"
)

// crockford is the ULID alphabet (Crockford's base32).
const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// NewQueueID returns a ULID: 48 bits of milliseconds and 80 random bits in
// 26 characters of Crockford base32. Queue ids sort by arrival time and are
// safe in subjects, file names and headers.
func NewQueueID() string { return queueIDAt(time.Now()) }

func queueIDAt(t time.Time) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(t.UnixMilli())<<16)
	_, _ = rand.Read(b[6:])
	hi := binary.BigEndian.Uint64(b[:8])
	lo := binary.BigEndian.Uint64(b[8:])
	var out [26]byte
	// 128 bits in 26 base32 digits: the first digit holds the top 3 bits.
	for i := 25; i >= 0; i-- {
		out[i] = crockford[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
	return string(out[:])
}

// QueueIDFor derives a queue id from an idempotency key (a publisher's
// Nats-Msg-Id), so that the same key always names the same message.
func QueueIDFor(key string) string {
	sum := sha256.Sum256([]byte("mailroot-qid\x00" + key))
	return "K" + base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:])[:25]
}

// QueueIDTime is the time a queue id made by NewQueueID was made (its
// first 10 characters, the ULID's 48 bits of milliseconds); ok is false
// for any other id (QueueIDFor's, a publisher's own).
func QueueIDTime(id string) (t time.Time, ok bool) {
	if len(id) != 26 || id[0] > '7' {
		return time.Time{}, false
	}
	var ms uint64
	for i := 0; i < 10; i++ {
		v := strings.IndexByte(crockford, id[i])
		if v < 0 {
			return time.Time{}, false
		}
		ms = ms<<5 | uint64(v)
	}
	for i := 10; i < 26; i++ {
		if strings.IndexByte(crockford, id[i]) < 0 {
			return time.Time{}, false
		}
	}
	return time.UnixMilli(int64(ms)), true
}
