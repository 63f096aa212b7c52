// A C++ program built against the installed header and pkg-config, with
// strict warnings, as C++11 or C++17:
//
//   c++ -std=c++11 -Wall -Wextra -Werror -pedantic hello.cpp $(pkg-config --cflags --libs blackmamba) -o hello_cpp
//   ./hello_cpp MODEL_DIR [TOKENIZER_JSON]
//
// The handles are held by std::unique_ptr with the library's free functions
// as deleters. It feeds a prompt, generates greedily, forks the stream with
// bm_state_copy, checks the fork continues alike, and (with a tokenizer)
// generates text with bm_generate_ids. CI builds and runs it.
#include <blackmamba.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct ModelFree { void operator()(bm_model *m) const { bm_model_free(m); } };
struct SessionFree { void operator()(bm_session *s) const { bm_session_free(s); } };
struct StateFree { void operator()(bm_state *s) const { bm_state_free(s); } };
struct TokenizerFree { void operator()(bm_tokenizer *t) const { bm_tokenizer_free(t); } };

typedef std::unique_ptr<bm_model, ModelFree> Model;
typedef std::unique_ptr<bm_session, SessionFree> Session;
typedef std::unique_ptr<bm_state, StateFree> State;
typedef std::unique_ptr<bm_tokenizer, TokenizerFree> Tokenizer;

void check(bm_status st, const char *what) {
    if (st != BM_OK) throw std::runtime_error(std::string(what) + ": " + bm_status_string(st) + " (" + bm_last_error() + ")");
}

State new_state(const Model &m) {
    bm_state *s = nullptr;
    check(bm_state_new(m.get(), &s), "bm_state_new");
    return State(s);
}

int collect(const char *piece, size_t len, int32_t, void *user) {
    static_cast<std::string *>(user)->append(piece, len);
    return 0;
}

int run(int argc, char **argv) {
    if ((bm_version() >> 16) != BM_VERSION_MAJOR) throw std::runtime_error("header and library majors differ");
    bm_model_params mp;
    bm_model_params_init(&mp);
    mp.backend = BM_BACKEND_CPU;
    mp.n_threads = 2;
    bm_model *raw = nullptr;
    check(bm_model_load(argv[1], &mp, &raw), "bm_model_load");
    Model model(raw);
    bm_model_info info;
    std::memset(&info, 0, sizeof info);
    info.size = sizeof info;
    check(bm_model_get_info(model.get(), &info), "bm_model_get_info");

    bm_session *rs = nullptr;
    check(bm_session_new(model.get(), nullptr, &rs), "bm_session_new");
    Session session(rs);
    State a = new_state(model), b = new_state(model);

    std::vector<float> logits(static_cast<size_t>(info.vocab_size)), logits_b(logits.size());
    const int32_t prompt[] = {1, 2, 3, 4};
    check(bm_prefill(session.get(), a.get(), prompt, 4, logits.data()), "bm_prefill");
    bm_sampler_params sp;
    bm_sampler_params_init(&sp);
    sp.temperature = 0.0f;
    uint64_t rng = 7;
    std::printf("greedy:");
    for (int i = 0; i < 8; i++) {
        int32_t token = 0;
        check(bm_sample(logits.data(), logits.size(), &sp, &rng, nullptr, 0, &token), "bm_sample");
        std::printf(" %d", static_cast<int>(token));
        check(bm_step(session.get(), a.get(), token, logits.data()), "bm_step");
    }
    std::printf("\n");
    check(bm_state_copy(b.get(), a.get()), "bm_state_copy");
    check(bm_step(session.get(), a.get(), 9, logits.data()), "bm_step");
    check(bm_step(session.get(), b.get(), 9, logits_b.data()), "bm_step");
    if (logits != logits_b) throw std::runtime_error("a forked state continues differently");
    std::printf("fork: %llu tokens, continues exactly\n", static_cast<unsigned long long>(bm_state_n_tokens(b.get())));

    if (argc > 2) {
        bm_tokenizer *rt = nullptr;
        check(bm_tokenizer_load(argv[2], &rt), "bm_tokenizer_load");
        Tokenizer tok(rt);
        bm_generate_params gp;
        bm_generate_params_init(&gp);
        gp.sampler.temperature = 0.0f;
        gp.max_tokens = 8;
        std::string text;
        gp.on_piece = collect;
        gp.user_data = &text;
        bm_generate_result res;
        std::memset(&res, 0, sizeof res);
        res.size = sizeof res;
        const int32_t ids[] = {1, 2};
        State c = new_state(model);
        check(bm_generate_ids(session.get(), c.get(), tok.get(), ids, 2, &gp, &rng, &res), "bm_generate_ids");
        std::printf("generated %d tokens (%zu bytes of text)\n", static_cast<int>(res.n_generated), text.size());
    }
    std::printf("hello_cpp: ok\n");
    return 0;
}

}  // namespace

int main(int argc, char **argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s MODEL_DIR [TOKENIZER_JSON]\n", argv[0]);
        return 2;
    }
    try {
        return run(argc, argv);
    } catch (const std::exception &e) {
        std::fprintf(stderr, "hello_cpp: %s\n", e.what());
        return 1;
    }
}
