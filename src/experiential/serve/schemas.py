"""Request bodies (pydantic). Chat requests follow the OpenAI chat-completions shape; fields the
server cannot honour are refused with a clear message rather than silently ignored."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..experience import Message


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None

    def to_message(self) -> Message:
        if self.content is None:
            text = ""
        elif isinstance(self.content, str):
            text = self.content
        else:
            text = "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: Optional[str] = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    max_tokens: Optional[int] = Field(default=None, ge=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=1, description="only n=1 is supported")
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None

    @field_validator("stop")
    @classmethod
    def _no_stop(cls, v: Any) -> Any:
        if v:
            raise ValueError("stop sequences are not supported by this server")
        return v

    def prompt(self) -> list[Message]:
        msgs = [m.to_message() for m in self.messages]
        if not any(m["content"].strip() for m in msgs):
            raise ValueError("all messages are empty")
        return msgs


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    response_id: str = Field(min_length=1)
    feedback: str = ""
    corrected_answer: Optional[str] = None
    id: Optional[str] = Field(default=None, min_length=1, max_length=200,
                              description="idempotency key: a retry with the same id is stored "
                                          "once")
    metadata: Optional[dict[str, Any]] = None


class LearnRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wait: bool = False
    timeout: Optional[float] = Field(default=None, gt=0)
    force: bool = False


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] = Field(min_length=1)
    completion: str = Field(min_length=1)
