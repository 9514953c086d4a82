// amqp091-go probe for tests/tests/clients.rs: runs one scenario and prints one JSON line saying
// what amqp091-go reported. See tests/clients/README.md for the arguments, the scenarios, the
// output and how it is built (GOPATH mode against Debian's /usr/share/gocode, no module proxy).
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

type result = map[string]any

// outcomeOf says what amqp091-go reported: the error's type, and the reply code and text of an
// *amqp.Error (Server: whether the broker sent it or the library made it up).
func outcomeOf(err error) result {
	if e, ok := err.(*amqp.Error); ok {
		return result{"outcome": "error", "kind": fmt.Sprintf("%T", err), "code": e.Code, "text": e.Reason, "server": e.Server}
	}
	return result{"outcome": "error", "kind": fmt.Sprintf("%T", err), "code": nil, "text": err.Error()}
}

// step runs one step: {"outcome": "ok", ...whatever f returns} or the error amqp091-go returned.
func step(f func() (result, error)) result {
	r, err := f()
	if err != nil {
		return outcomeOf(err)
	}
	out := result{"outcome": "ok"}
	for k, v := range r {
		out[k] = v
	}
	return out
}

func connect(host, port, user, password, vhost string) (*amqp.Connection, error) {
	return amqp.DialConfig("amqp://"+host+":"+port+"/", amqp.Config{
		Vhost: vhost,
		SASL:  []amqp.Authentication{&amqp.PlainAuth{Username: user, Password: password}},
		Dial:  amqp.DefaultDial(20 * time.Second),
	})
}

func publishGet(conn *amqp.Connection, queue string) (result, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	if _, err := ch.QueueDeclare(queue, false, false, false, false, nil); err != nil {
		return nil, err
	}
	if err := ch.Publish("", queue, false, false, amqp.Publishing{Body: []byte("hello")}); err != nil {
		return nil, err
	}
	msg, ok, err := ch.Get(queue, true)
	if err != nil {
		return nil, err
	}
	if _, err := ch.QueueDelete(queue, false, false, false); err != nil {
		return nil, err
	}
	var body any
	if ok {
		body = string(msg.Body)
	}
	return result{"body": body}, ch.Close()
}

// onNewChannel runs f on a new channel of conn (a channel error closes the channel).
func onNewChannel(conn *amqp.Connection, f func(ch *amqp.Channel) error) func() (result, error) {
	return func() (result, error) {
		ch, err := conn.Channel()
		if err == nil {
			err = f(ch)
		}
		return nil, err
	}
}

func passive(queue string) func(ch *amqp.Channel) error {
	return func(ch *amqp.Channel) error {
		_, err := ch.QueueDeclarePassive(queue, false, false, false, false, nil)
		return err
	}
}

const replyTo = "amq.rabbitmq.reply-to"

// directReplyTo is an RPC over direct reply-to: the requester consumes amq.rabbitmq.reply-to and
// publishes a request naming it; a second channel gets the request and publishes the answer to
// the name the broker put in its ReplyTo.
func directReplyTo(conn *amqp.Connection, queue string) (result, error) {
	requester, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	replies, err := requester.Consume(replyTo, "", true, false, false, false, nil)
	if err != nil {
		return nil, err
	}
	responder, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	if _, err := responder.QueueDeclare(queue, false, false, false, false, nil); err != nil {
		return nil, err
	}
	if err := requester.Publish("", queue, false, false, amqp.Publishing{ReplyTo: replyTo, Body: []byte("ping")}); err != nil {
		return nil, err
	}
	var request amqp.Delivery
	for got := false; !got; {
		if request, got, err = responder.Get(queue, true); err != nil {
			return nil, err
		}
	}
	if err := responder.Publish("", request.ReplyTo, false, false, amqp.Publishing{Body: []byte("pong")}); err != nil {
		return nil, err
	}
	reply := <-replies
	if _, err := responder.QueueDelete(queue, false, false, false); err != nil {
		return nil, err
	}
	generated := strings.HasPrefix(request.ReplyTo, replyTo+".")
	return result{"request": string(request.Body), "reply": string(reply.Body), "generated": generated}, nil
}

// ctag is the consumer tag of the consumer_cancelled scenario.
const ctag = "probe-ctag"

// consumerCancelled: a consumer receives a message; a second connection deletes its queue;
// amqp091-go reports the broker's cancel on NotifyCancel and closes the deliveries.
func consumerCancelled(conn, other *amqp.Connection, queue string) (result, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	if _, err := ch.QueueDeclare(queue, false, false, false, false, nil); err != nil {
		return nil, err
	}
	cancels := ch.NotifyCancel(make(chan string, 1))
	deliveries, err := ch.Consume(queue, ctag, true, false, false, false, nil)
	if err != nil {
		return nil, err
	}
	if err := ch.Publish("", queue, false, false, amqp.Publishing{Body: []byte("hello")}); err != nil {
		return nil, err
	}
	delivery := <-deliveries
	if _, err := onNewChannel(other, func(och *amqp.Channel) error {
		_, err := och.QueueDelete(queue, false, false, false)
		return err
	})(); err != nil {
		return nil, err
	}
	return result{"delivered": string(delivery.Body), "cancelled": <-cancels}, nil
}

func run(host, port, user, password, vhost, scenario, queue string) (result, error) {
	switch scenario {
	case "wrong_password", "unknown_vhost":
		conn, err := connect(host, port, user, password, vhost)
		if err != nil {
			return nil, err
		}
		if _, err := conn.Channel(); err != nil {
			return nil, err
		}
		return result{"outcome": "ok"}, conn.Close()
	case "publish_get":
		conn, err := connect(host, port, user, password, vhost)
		if err != nil {
			return nil, err
		}
		r := step(func() (result, error) { return publishGet(conn, queue) })
		return r, conn.Close()
	case "passive_missing_queue":
		conn, err := connect(host, port, user, password, vhost)
		if err != nil {
			return nil, err
		}
		r := result{
			"passive": step(onNewChannel(conn, passive(queue))),
			"after":   step(func() (result, error) { return publishGet(conn, queue) }),
		}
		return r, conn.Close()
	case "exclusive_locked":
		owner, err := connect(host, port, user, password, vhost)
		if err != nil {
			return nil, err
		}
		ownerCh, err := owner.Channel()
		if err != nil {
			return nil, err
		}
		if _, err := ownerCh.QueueDeclare(queue, false, false, true, false, nil); err != nil {
			return nil, err
		}
		other, err := connect(host, port, user, password, vhost)
		if err != nil {
			return nil, err
		}
		r := result{
			"passive": step(onNewChannel(other, passive(queue))),
			"get": step(onNewChannel(other, func(ch *amqp.Channel) error {
				_, _, err := ch.Get(queue, true)
				return err
			})),
			"delete": step(onNewChannel(other, func(ch *amqp.Channel) error {
				_, err := ch.QueueDelete(queue, false, false, false)
				return err
			})),
		}
		if err := other.Close(); err != nil {
			return nil, err
		}
		if _, err := ownerCh.QueueDelete(queue, false, false, false); err != nil {
			return nil, err
		}
		return r, owner.Close()
	case "direct_reply_to":
		conn, err := connect(host, port, user, password, vhost)
		if err != nil {
			return nil, err
		}
		r := result{
			"rpc": step(func() (result, error) { return directReplyTo(conn, queue) }),
			// The broker closes the channel; a later call would race the close, so the probe
			// reports the close itself.
			"no_consumer": step(onNewChannel(conn, func(ch *amqp.Channel) error {
				closed := ch.NotifyClose(make(chan *amqp.Error, 1))
				if err := ch.Publish("", queue, false, false, amqp.Publishing{ReplyTo: replyTo, Body: []byte("ping")}); err != nil {
					return err
				}
				return <-closed
			})),
			"acking": step(onNewChannel(conn, func(ch *amqp.Channel) error {
				_, err := ch.Consume(replyTo, "", false, false, false, false, nil)
				return err
			})),
		}
		return r, conn.Close()
	case "consumer_cancelled":
		conn, err := connect(host, port, user, password, vhost)
		if err != nil {
			return nil, err
		}
		other, err := connect(host, port, user, password, vhost)
		if err != nil {
			return nil, err
		}
		r := result{
			"consume": step(func() (result, error) { return consumerCancelled(conn, other, queue) }),
			"after":   step(func() (result, error) { return publishGet(conn, queue) }),
		}
		if err := other.Close(); err != nil {
			return nil, err
		}
		return r, conn.Close()
	}
	fmt.Fprintf(os.Stderr, "unknown scenario %q\n", scenario)
	os.Exit(2)
	return nil, nil
}

func main() {
	a := os.Args[1:]
	if len(a) < 7 {
		fmt.Fprintln(os.Stderr, "usage: amqp091_probe HOST PORT USER PASSWORD VHOST SCENARIO QUEUE")
		os.Exit(2)
	}
	if _, err := strconv.Atoi(a[1]); err != nil {
		fmt.Fprintf(os.Stderr, "bad port %q\n", a[1])
		os.Exit(2)
	}
	r, err := run(a[0], a[1], a[2], a[3], a[4], a[5], a[6])
	if err != nil {
		r = outcomeOf(err)
	}
	line, _ := json.Marshal(r)
	fmt.Println(string(line))
}
